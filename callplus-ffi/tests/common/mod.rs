//! The server the C API suites run against: an ephemeral port on 127.0.0.1, in-memory storage,
//! its own runtime (the C API blocks its calling thread, so the server must not share it).
//! Each suite adds the helpers it needs in its own `impl TestServer` block.

use callplus_server::server::{RunningServer, Server, ServerBuilder};

pub(crate) struct TestServer {
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
}

impl TestServer {
    pub(crate) fn start() -> TestServer {
        TestServer::start_with(|builder| builder)
    }

    /// A server with more settings (TLS, a push webhook, …) made by `configure`.
    pub(crate) fn start_with(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> TestServer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let builder = configure(Server::builder().in_memory().listen("127.0.0.1:0").no_admin());
        let server = runtime.block_on(builder.start()).expect("server starts");
        TestServer { runtime, server: Some(server) }
    }

    pub(crate) fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}
