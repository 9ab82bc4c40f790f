//! The connection settings (flags or `KMSD_*` environment, the names
//! `kmsd_client::env` defines) and the officer's one-time code sent with
//! every call.
//!
//! kmsctl connects through the library's typed [`Client`] (failover over a
//! comma-separated `KMSD_ADDR`, retries on the data path, request ids);
//! the commands the client does not wrap (streams, health) use its
//! channel with the [`Otp`] interceptor.
use crate::cli::Cli;
use crate::error::Error;
use kmsd_client::{env, CallOptions, Client, ClientBuilder};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// A channel whose calls carry the one-time code, if any.
pub type Chan = InterceptedService<Channel, Otp>;

/// An officer's one-time code, sent as `x-kmsd-otp` on every call.
#[derive(Clone, Default)]
pub struct Otp(Option<MetadataValue<Ascii>>, Option<String>);

impl Otp {
    /// A code as typed (surrounding spaces ignored).
    pub fn new(code: &str) -> Result<Otp, Error> {
        let code = code.trim();
        code.parse()
            .map(|v| Otp(Some(v), Some(code.to_owned())))
            .map_err(|_| Error::Input("the one-time code is not valid text".into()))
    }

    /// Whether a code is set.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The typed client's call options carrying this code.
    pub fn call_options(&self) -> CallOptions {
        match &self.1 {
            Some(code) => CallOptions::new().otp(code.clone()),
            None => CallOptions::new(),
        }
    }
}

impl Interceptor for Otp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(kmsd_client::metadata::OTP, v.clone());
        }
        Ok(req)
    }
}

/// The client settings from flags and environment.
pub fn builder(cli: &Cli) -> Result<ClientBuilder, Error> {
    let need = |v: &Option<std::path::PathBuf>, var, flag| v.clone().ok_or(Error::NotSet { var, flag });
    let addr = cli.addr.clone().ok_or(Error::NotSet {
        var: env::ADDR,
        flag: "--addr",
    })?;
    let mut b = ClientBuilder::new()
        .endpoints_from_list(&addr)
        .ca(need(&cli.ca, env::CA, "--ca")?)
        .cert(need(&cli.cert, env::CERT, "--cert")?)
        .key(need(&cli.tls_key, env::KEY, "--tls-key")?);
    if let Some(name) = &cli.server_name {
        b = b.server_name(name.clone());
    }
    Ok(b)
}

/// Connects (the client checks its certificate first); the client's calls
/// carry `otp`.
pub async fn connect(cli: &Cli, otp: &Otp) -> Result<Client, Error> {
    let client = builder(cli)?.connect().await?;
    Ok(client.with(otp.call_options()))
}

/// The current endpoint's channel, every call carrying `otp`.
pub async fn channel(client: &Client, otp: Otp) -> Result<Chan, Error> {
    Ok(InterceptedService::new(client.channel().await?, otp))
}
