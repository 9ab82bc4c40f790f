//! The connection settings (flags or `KMSD_*` environment) and the
//! officer's one-time code sent with every call.
use crate::cli::Cli;
use crate::error::Error;
use kmsd_client::ClientSettings;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// A channel whose calls carry the one-time code, if any.
pub type Chan = InterceptedService<Channel, Otp>;

/// An officer's one-time code, sent as `x-kmsd-otp` on every call.
#[derive(Clone, Default)]
pub struct Otp(Option<MetadataValue<Ascii>>);

impl Otp {
    /// A code as typed (surrounding spaces ignored).
    pub fn new(code: &str) -> Result<Otp, Error> {
        code.trim()
            .parse()
            .map(|v| Otp(Some(v)))
            .map_err(|_| Error::Input("the one-time code is not valid text".into()))
    }

    /// Whether a code is set.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
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

/// The settings from flags and environment.
pub fn settings(cli: &Cli) -> Result<ClientSettings, Error> {
    let need = |v: &Option<std::path::PathBuf>, var, flag| v.clone().ok_or(Error::NotSet { var, flag });
    Ok(ClientSettings {
        addr: cli.addr.clone().ok_or(Error::NotSet {
            var: "KMSD_ADDR",
            flag: "--addr",
        })?,
        ca: need(&cli.ca, "KMSD_CA", "--ca")?,
        cert: need(&cli.cert, "KMSD_CERT", "--cert")?,
        key: need(&cli.tls_key, "KMSD_KEY", "--tls-key")?,
        server_name: cli.server_name.clone(),
    })
}

/// Connects (the client checks its certificate first) and wraps the
/// channel so every call carries `otp`.
pub async fn connect(cli: &Cli, otp: Otp) -> Result<Chan, Error> {
    let channel = kmsd_client::connect(&settings(cli)?).await?;
    Ok(InterceptedService::new(channel, otp))
}
