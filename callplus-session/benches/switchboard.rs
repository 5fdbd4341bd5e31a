//! Full 1:1 call cycles through the switchboard.
//!
//! Two devices connect once; then each iteration runs StartCall → IncomingCall delivered →
//! callee acks → Accept → both connected → Hangup → records output, draining every output (as
//! the driver would) and acking every frame (so outboxes stay small). The virtual clock moves
//! one second per cycle, so timers fire and ended calls age out as they would in a real server.
#![allow(missing_docs)]

use std::hint::black_box;

use callplus_session::switchboard::{ConnId, Output, Switchboard, SwitchboardConfig};
use callplus_session::{
    AppKey, CallId, CallType, ClientBody, ClientFrame, DeviceId, Hello, MediaType, Request, Response,
    ResponseBody, ServerBody, StartCall, UserId,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

struct Device {
    conn: ConnId,
    seq: u64,
    ack: u64,
}

impl Device {
    fn frame(&mut self, body: ClientBody) -> ClientFrame {
        self.seq += 1;
        ClientFrame { seq: self.seq, ack: self.ack, request_id: self.seq, body }
    }
}

struct Bench {
    sb: Switchboard,
    now: i64,
    a: Device,
    b: Device,
    bob: UserId,
    outputs: usize,
}

impl Bench {
    fn new() -> Bench {
        let app = AppKey::new("bench").unwrap_or_else(|e| panic!("{e}"));
        let now = 1_700_000_000_000;
        let mut bench = Bench {
            sb: Switchboard::new(SwitchboardConfig::default()),
            now,
            a: Device { conn: 1, seq: 0, ack: 0 },
            b: Device { conn: 2, seq: 0, ack: 0 },
            bob: UserId::new("bob").unwrap_or_else(|e| panic!("{e}")),
            outputs: 0,
        };
        for (conn, user, device) in [(1, "alice", "a1"), (2, "bob", "b1")] {
            let hello = Hello {
                token: String::new(),
                device_id: DeviceId::new(device).unwrap_or_else(|e| panic!("{e}")),
                resume: None,
                client_version: "bench".into(),
            };
            let user = UserId::new(user).unwrap_or_else(|e| panic!("{e}"));
            bench.sb.connect(now, conn, app.clone(), user, hello);
        }
        bench.drain();
        bench
    }

    /// Drains outputs like a driver (which encodes frames by reference); returns the call id
    /// seen in a Started response, if any.
    fn drain(&mut self) -> Option<CallId> {
        let mut started = None;
        while let Some(out) = self.sb.poll_output() {
            self.outputs += 1;
            match &out {
                Output::Transmit { conn, frame } => {
                    let dev = if *conn == self.a.conn { &mut self.a } else { &mut self.b };
                    if frame.seq != 0 {
                        dev.ack = frame.seq;
                    }
                    if let ServerBody::Response(Response {
                        result: Ok(ResponseBody::Started { call, .. }),
                        ..
                    }) = &*frame.body
                    {
                        started = Some(call.call_id.clone());
                    }
                }
                other => {
                    black_box(other);
                }
            }
        }
        started
    }

    fn cycle(&mut self) {
        self.now += 1_000;
        if self.sb.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sb.handle_timeout(self.now);
            self.drain();
        }
        let start = Request::StartCall(StartCall {
            callees: vec![self.bob.clone()],
            call_type: CallType::Single,
            media_type: MediaType::AudioVideo,
            push: None,
            extra: String::new(),
            ring_timeout_ms: None,
        });
        let f = self.a.frame(ClientBody::Request(start));
        self.sb.handle_frame(self.now, self.a.conn, f);
        let Some(call_id) = self.drain() else { panic!("no call started") };
        // The callee acks the IncomingCall (a ping carrying the ack).
        let ping = ClientFrame { seq: 0, ack: self.b.ack, request_id: 0, body: ClientBody::Ping };
        self.sb.handle_frame(self.now, self.b.conn, ping);
        self.drain();
        let f = self.b.frame(ClientBody::Request(Request::Accept { call_id: call_id.clone() }));
        self.sb.handle_frame(self.now, self.b.conn, f);
        self.drain();
        let f = self.a.frame(ClientBody::Request(Request::Hangup { call_id, push: None }));
        self.sb.handle_frame(self.now, self.a.conn, f);
        self.drain();
    }
}

fn full_cycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("switchboard");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_to_one_call_cycle", |bencher| {
        let mut bench = Bench::new();
        bencher.iter(|| bench.cycle());
        assert_eq!(bench.sb.live_calls(), 0);
        black_box(bench.outputs);
    });
    group.finish();
}

criterion_group!(benches, full_cycles);
criterion_main!(benches);
