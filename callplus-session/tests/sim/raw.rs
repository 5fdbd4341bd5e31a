//! Frames sent straight to the switchboard, bypassing the client engine's own validation, to
//! check what the server itself allows (a hostile or buggy client can send anything).

use callplus_session::switchboard::Output;
use callplus_session::{CallId, ClientBody, ClientFrame, Code, DeviceId, Hello, Request, ServerBody};

use super::Sim;

impl Sim {
    /// Opens a raw connection as another device of device `idx`'s user, sends `request` as its
    /// first sequenced frame and returns the error code of the response (`None` on success).
    pub fn raw_request(&mut self, idx: usize, request: Request) -> Option<Code> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (app, user) = (self.devices[idx].app.clone(), self.devices[idx].user.clone());
        let device_id = DeviceId::new(&format!("raw-{conn}")).unwrap_or_else(|e| panic!("{e}"));
        let hello = Hello { token: user.to_string(), device_id, resume: None, client_version: "raw".into() };
        let now = self.now;
        self.switchboard.connect(now, conn, app, user, hello);
        let frame = ClientFrame { seq: 1, ack: 0, request_id: 77, body: ClientBody::Request(request) };
        self.switchboard.handle_frame(now, conn, frame);
        self.run_for(10);
        let answer = self.outputs.iter().find_map(|o| match o {
            Output::Transmit { conn: c, frame } if *c == conn => match &*frame.body {
                ServerBody::Response(r) if r.request_id == 77 => Some(r.result.clone()),
                _ => None,
            },
            _ => None,
        });
        match answer {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(e.code),
            None => panic!("the switchboard did not answer the raw request"),
        }
    }

    pub fn raw_hangup(&mut self, idx: usize, call: &CallId) -> Option<Code> {
        self.raw_request(idx, Request::Hangup { call_id: call.clone(), push: None })
    }

    pub fn raw_accept(&mut self, idx: usize, call: &CallId) -> Option<Code> {
        self.raw_request(idx, Request::Accept { call_id: call.clone() })
    }

    pub fn raw_get_call(&mut self, idx: usize, call: &CallId) -> Option<Code> {
        self.raw_request(idx, Request::GetCall { call_id: call.clone() })
    }
}
