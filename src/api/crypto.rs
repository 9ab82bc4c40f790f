//! `kmsd.v1.Crypto`: encrypt, decrypt, rewrap (single and batch), data
//! keys, MACs (single and batch), signatures and public keys. Every handler goes through the call pipeline ([`super::call`]);
//! the envelope and key material stay in [`crate::rings`].
use super::call::{blocking, Batch, Shared};
use super::convert::algorithm_to_proto;
use crate::authz::{Call, Op};
use crate::error::{Error, Invalid};
use crate::proto;
use crate::rings::{EncryptCall, Rings};
use kmsd_keystore::sign::{SigEncoding, SignInput};
use rand::RngCore;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

/// `kmsd.v1.Crypto`.
#[derive(Debug, Clone)]
pub struct CryptoService {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Most items accepted in one batch call.
    pub max_batch_items: usize,
}

impl CryptoService {
    fn rewrap_one(
        rings: &Arc<Rings>,
        enc: &mut EncryptCall,
        r: &proto::RewrapRequest,
    ) -> Result<proto::RewrapResponse, Error> {
        let (plaintext, source) = rings.decrypt(&r.key, &r.ciphertext, &r.associated_data)?;
        let plaintext = Zeroizing::new(plaintext);
        let e = rings.encrypt_in(enc, &r.key, &plaintext, &r.associated_data)?;
        Ok(proto::RewrapResponse {
            ciphertext: e.ciphertext,
            key_version: e.version,
            source_key_version: source,
        })
    }

    fn mac_one(rings: &Arc<Rings>, enc: &mut EncryptCall, r: &proto::MacRequest) -> Result<proto::MacResponse, Error> {
        let version = (r.key_version != 0).then_some(r.key_version);
        let (mac, key_version) = rings.mac_in(enc, &r.key, version, &r.data)?;
        Ok(proto::MacResponse { mac, key_version })
    }

    async fn data_key(
        &self,
        req: Request<proto::GenerateDataKeyRequest>,
        with_plaintext: bool,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        let call = self.shared.begin(&req, Op::Datakey, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?.clone();
        let (key, aad, bits) = (r.key, r.associated_data, r.bits);
        let result = blocking(move || {
            let len = match bits {
                0 | 256 => 32,
                192 => 24,
                128 => 16,
                _ => return Err(Error::InvalidArgument(Invalid::DataKeyBits)),
            };
            let mut dk = Zeroizing::new(vec![0u8; len]);
            rand::rngs::OsRng.fill_bytes(&mut dk);
            let e = rings.encrypt(&key, &dk, &aad)?;
            Ok(proto::GenerateDataKeyResponse {
                plaintext: if with_plaintext { dk.to_vec() } else { Vec::new() },
                ciphertext: e.ciphertext,
                key_version: e.version,
            })
        })
        .await;
        if let Ok(r) = &result {
            call.used_version(r.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }
}

#[tonic::async_trait]
impl proto::crypto_server::Crypto for CryptoService {
    async fn encrypt(&self, req: Request<proto::EncryptRequest>) -> Result<Response<proto::EncryptResponse>, Status> {
        let call = self.shared.begin(&req, Op::Encrypt, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let result = self.shared.rings()?.encrypt(&r.key, &r.plaintext, &r.associated_data);
        if let Ok(e) = &result {
            call.used_version(e.version);
        }
        let e = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::EncryptResponse {
            ciphertext: e.ciphertext,
            key_version: e.version,
        }))
    }

    async fn decrypt(&self, req: Request<proto::DecryptRequest>) -> Result<Response<proto::DecryptResponse>, Status> {
        let call = self.shared.begin(&req, Op::Decrypt, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let result = self.shared.rings()?.decrypt(&r.key, &r.ciphertext, &r.associated_data);
        if let Ok((_, v)) = &result {
            call.used_version(*v);
        }
        let (plaintext, key_version) = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::DecryptResponse { plaintext, key_version }))
    }

    async fn rewrap(&self, req: Request<proto::RewrapRequest>) -> Result<Response<proto::RewrapResponse>, Status> {
        let call = self.shared.begin(&req, Op::Rewrap, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?;
        let result = Self::rewrap_one(rings, &mut rings.call(1), &r);
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn encrypt_batch(
        &self,
        req: Request<proto::EncryptBatchRequest>,
    ) -> Result<Response<proto::EncryptBatchResponse>, Status> {
        use proto::encrypt_batch_item::Result as R;
        let (call, rings, r) = self.batch_call(req, Op::Encrypt)?;
        let mut enc = rings.call(r.items.len());
        let items = self.batch(&call).run(
            &r.items,
            |it| &it.key,
            |it| {
                rings
                    .encrypt_in(&mut enc, &it.key, &it.plaintext, &it.associated_data)
                    .map(|e| proto::EncryptResponse {
                        ciphertext: e.ciphertext,
                        key_version: e.version,
                    })
            },
            |o| (o.key_version, None),
            |res| proto::EncryptBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            },
        )?;
        Ok(Response::new(proto::EncryptBatchResponse { items }))
    }

    async fn decrypt_batch(
        &self,
        req: Request<proto::DecryptBatchRequest>,
    ) -> Result<Response<proto::DecryptBatchResponse>, Status> {
        use proto::decrypt_batch_item::Result as R;
        let (call, rings, r) = self.batch_call(req, Op::Decrypt)?;
        let items = self.batch(&call).run(
            &r.items,
            |it| &it.key,
            |it| {
                rings
                    .decrypt(&it.key, &it.ciphertext, &it.associated_data)
                    .map(|(plaintext, key_version)| proto::DecryptResponse { plaintext, key_version })
            },
            |o| (o.key_version, None),
            |res| proto::DecryptBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            },
        )?;
        Ok(Response::new(proto::DecryptBatchResponse { items }))
    }

    async fn rewrap_batch(
        &self,
        req: Request<proto::RewrapBatchRequest>,
    ) -> Result<Response<proto::RewrapBatchResponse>, Status> {
        use proto::rewrap_batch_item::Result as R;
        let (call, rings, r) = self.batch_call(req, Op::Rewrap)?;
        let mut enc = rings.call(r.items.len());
        let items = self.batch(&call).run(
            &r.items,
            |it| &it.key,
            |it| Self::rewrap_one(&rings, &mut enc, it),
            |o| (o.key_version, Some(o.source_key_version)),
            |res| proto::RewrapBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            },
        )?;
        Ok(Response::new(proto::RewrapBatchResponse { items }))
    }

    async fn generate_data_key(
        &self,
        req: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        self.data_key(req, true).await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        req: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        self.data_key(req, false).await
    }

    async fn mac(&self, req: Request<proto::MacRequest>) -> Result<Response<proto::MacResponse>, Status> {
        let call = self.shared.begin(&req, Op::Mac, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?;
        let result = Self::mac_one(rings, &mut rings.call(1), &r);
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn mac_batch(
        &self,
        req: Request<proto::MacBatchRequest>,
    ) -> Result<Response<proto::MacBatchResponse>, Status> {
        use proto::mac_batch_item::Result as R;
        let (call, rings, r) = self.batch_call(req, Op::Mac)?;
        let mut enc = rings.call(r.items.len());
        let items = self.batch(&call).run(
            &r.items,
            |it| &it.key,
            |it| Self::mac_one(&rings, &mut enc, it),
            |o| (o.key_version, None),
            |res| proto::MacBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            },
        )?;
        Ok(Response::new(proto::MacBatchResponse { items }))
    }

    async fn verify_mac(
        &self,
        req: Request<proto::VerifyMacRequest>,
    ) -> Result<Response<proto::VerifyMacResponse>, Status> {
        let call = self.shared.begin(&req, Op::Verify, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let result = self
            .shared
            .rings()?
            .verify_mac(&r.key, r.key_version, &r.data, &r.mac)
            .map(|(valid, key_version)| proto::VerifyMacResponse { valid, key_version });
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn sign(&self, req: Request<proto::SignRequest>) -> Result<Response<proto::SignResponse>, Status> {
        let call = self.shared.begin(&req, Op::Sign, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?.clone();
        // (RSA signing takes milliseconds: off the async workers)
        let result = blocking(move || {
            let encoding = encoding(r.encoding)?;
            let input = match &r.input {
                Some(proto::sign_request::Input::Message(m)) => SignInput::Message(m),
                Some(proto::sign_request::Input::Digest(d)) => SignInput::Digest(d),
                None => return Err(Error::InvalidArgument(Invalid::NoSignInput)),
            };
            let s = rings.sign_in(&mut rings.call(1), &r.key, input, encoding)?;
            Ok(proto::SignResponse {
                signature: s.signature,
                key_version: s.version,
                algorithm: algorithm_to_proto(s.algorithm) as i32,
            })
        })
        .await;
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn verify(&self, req: Request<proto::VerifyRequest>) -> Result<Response<proto::VerifyResponse>, Status> {
        let call = self.shared.begin(&req, Op::Verify, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?;
        let result = (|| {
            let encoding = encoding(r.encoding)?;
            let input = match &r.input {
                Some(proto::verify_request::Input::Message(m)) => SignInput::Message(m),
                Some(proto::verify_request::Input::Digest(d)) => SignInput::Digest(d),
                None => return Err(Error::InvalidArgument(Invalid::NoSignInput)),
            };
            let (valid, key_version, _) =
                rings.verify_signature(&r.key, r.key_version, input, &r.signature, encoding)?;
            Ok(proto::VerifyResponse { valid, key_version })
        })();
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn get_public_key(
        &self,
        req: Request<proto::GetPublicKeyRequest>,
    ) -> Result<Response<proto::GetPublicKeyResponse>, Status> {
        let call = self.shared.begin(&req, Op::Verify, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let result = self.shared.rings()?.public_key(&r.key, r.key_version).and_then(|p| {
            let kid = format!("{}/{}", r.key, p.version);
            Ok(proto::GetPublicKeyResponse {
                pem: p.key.pem()?,
                jwk: p.key.jwk(&kid),
                algorithm: algorithm_to_proto(p.algorithm) as i32,
                key_version: p.version,
                kid,
            })
        });
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }
}

/// The signature encoding a request names (unset = DER).
fn encoding(e: i32) -> Result<SigEncoding, Error> {
    match proto::SignatureEncoding::try_from(e) {
        Ok(proto::SignatureEncoding::Unspecified | proto::SignatureEncoding::Der) => Ok(SigEncoding::Der),
        Ok(proto::SignatureEncoding::P1363) => Ok(SigEncoding::P1363),
        Err(_) => Err(Error::InvalidArgument(Invalid::SignatureEncoding)),
    }
}

impl CryptoService {
    /// A batch names its keys per item: the call itself only needs the
    /// caller to be known (each item is then checked against the policy).
    fn batch_call<T>(&self, req: Request<T>, op: Op) -> Result<(Call, Arc<Rings>, T), Error> {
        self.shared.access()?;
        let mut call = self.shared.begin_unchecked(&req, op, "batch")?;
        call.key = Some("(batch)".into());
        let rings = self.shared.rings()?.clone();
        Ok((call, rings, req.into_inner()))
    }

    fn batch<'a>(&'a self, call: &'a Call) -> Batch<'a> {
        Batch {
            shared: &self.shared,
            call,
            max_items: self.max_batch_items,
        }
    }
}
