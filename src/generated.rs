//! The code build.rs generates from `openapi.yaml` with progenitor: the request and response
//! types (public through `models`) and a client whose every exchange goes through the
//! transport's hook, plugged in here.

use progenitor_client::{ClientHooks, ClientInfo, OperationInfo};
use reqwest::{Request, Response};

use crate::transport::{Call, exchange};

#[allow(missing_docs, clippy::all, private_interfaces, dead_code)]
mod code {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub(crate) use code::{Client, types};

impl ClientHooks<Call> for Client {
    // Not `async fn`: handing over `exchange`'s future as it is keeps the request out of one
    // more layer of the call's future, which is boxed and moved whole.
    fn exec(
        &self,
        request: Request,
        _info: &OperationInfo,
    ) -> impl Future<Output = reqwest::Result<Response>> {
        exchange(self.client(), self.inner(), request)
    }
}
