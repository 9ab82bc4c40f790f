//! `kmsd.v1.Crypto`: encrypt, decrypt, rewrap (single and batch) and data
//! keys. Every handler goes through the call pipeline ([`super::call`]);
//! the envelope and key material stay in [`crate::rings`].
use super::call::{blocking, Batch, Shared};
use crate::authz::{Call, Op};
use crate::error::{Error, Invalid};
use crate::proto;
use crate::rings::{EncryptCall, Rings};
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

    // Issue 17 (MACs and signatures): the API is fixed in proto/; these
    // handlers answer UNIMPLEMENTED until the key types land.
    async fn mac(&self, _req: Request<proto::MacRequest>) -> Result<Response<proto::MacResponse>, Status> {
        Err(Status::unimplemented("Mac is not implemented yet"))
    }

    async fn mac_batch(
        &self,
        _req: Request<proto::MacBatchRequest>,
    ) -> Result<Response<proto::MacBatchResponse>, Status> {
        Err(Status::unimplemented("MacBatch is not implemented yet"))
    }

    async fn verify_mac(
        &self,
        _req: Request<proto::VerifyMacRequest>,
    ) -> Result<Response<proto::VerifyMacResponse>, Status> {
        Err(Status::unimplemented("VerifyMac is not implemented yet"))
    }

    async fn sign(&self, _req: Request<proto::SignRequest>) -> Result<Response<proto::SignResponse>, Status> {
        Err(Status::unimplemented("Sign is not implemented yet"))
    }

    async fn verify(&self, _req: Request<proto::VerifyRequest>) -> Result<Response<proto::VerifyResponse>, Status> {
        Err(Status::unimplemented("Verify is not implemented yet"))
    }

    async fn get_public_key(
        &self,
        _req: Request<proto::GetPublicKeyRequest>,
    ) -> Result<Response<proto::GetPublicKeyResponse>, Status> {
        Err(Status::unimplemented("GetPublicKey is not implemented yet"))
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
