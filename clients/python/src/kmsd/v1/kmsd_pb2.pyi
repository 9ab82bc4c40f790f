from google.protobuf.internal import containers as _containers
# Made runtime-portable by clients/python/gen_stubs.py (see its docstring).
# grpcio-tools 1.85.1
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignatureEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_ENCODING_UNSPECIFIED: _ClassVar[SignatureEncoding]
    DER: _ClassVar[SignatureEncoding]
    P1363: _ClassVar[SignatureEncoding]

class KeyPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_PURPOSE_UNSPECIFIED: _ClassVar[KeyPurpose]
    ENCRYPT_DECRYPT: _ClassVar[KeyPurpose]
    TOKENIZE: _ClassVar[KeyPurpose]
    MAC: _ClassVar[KeyPurpose]
    SIGN_VERIFY: _ClassVar[KeyPurpose]

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_UNSPECIFIED: _ClassVar[Algorithm]
    AES_256_GCM: _ClassVar[Algorithm]
    HMAC_SHA256: _ClassVar[Algorithm]
    HMAC_SHA512: _ClassVar[Algorithm]
    ECDSA_P256_SHA256: _ClassVar[Algorithm]
    RSA_PSS_3072_SHA256: _ClassVar[Algorithm]
    RSA_PSS_4096_SHA256: _ClassVar[Algorithm]
    ED25519: _ClassVar[Algorithm]

class KeyOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_ORIGIN_UNSPECIFIED: _ClassVar[KeyOrigin]
    GENERATED: _ClassVar[KeyOrigin]
    IMPORTED: _ClassVar[KeyOrigin]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    ACTIVE: _ClassVar[VersionState]
    DECRYPT_ONLY: _ClassVar[VersionState]
    DISABLED: _ClassVar[VersionState]
    SCHEDULED_FOR_DESTRUCTION: _ClassVar[VersionState]
    DESTROYED: _ClassVar[VersionState]

class RotationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROTATION_REASON_UNSPECIFIED: _ClassVar[RotationReason]
    MANUAL: _ClassVar[RotationReason]
    SCHEDULED: _ClassVar[RotationReason]
    USAGE: _ClassVar[RotationReason]
    IMPORT: _ClassVar[RotationReason]

class DataKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_KIND_UNSPECIFIED: _ClassVar[DataKind]
    PAN: _ClassVar[DataKind]
    IBAN: _ClassVar[DataKind]
    UK_SORT_CODE: _ClassVar[DataKind]
    UK_ACCOUNT_NUMBER: _ClassVar[DataKind]
    EMAIL: _ClassVar[DataKind]
    PHONE: _ClassVar[DataKind]
    NAME: _ClassVar[DataKind]
    SECRET: _ClassVar[DataKind]
    JWT: _ClassVar[DataKind]
    BEARER_TOKEN: _ClassVar[DataKind]
    API_KEY: _ClassVar[DataKind]
    PASSWORD: _ClassVar[DataKind]
    TRACK_DATA: _ClassVar[DataKind]
    NATIONAL_ID: _ClassVar[DataKind]
    DATE_OF_BIRTH: _ClassVar[DataKind]
    ADDRESS: _ClassVar[DataKind]
    CUSTOM: _ClassVar[DataKind]
SIGNATURE_ENCODING_UNSPECIFIED: SignatureEncoding
DER: SignatureEncoding
P1363: SignatureEncoding
KEY_PURPOSE_UNSPECIFIED: KeyPurpose
ENCRYPT_DECRYPT: KeyPurpose
TOKENIZE: KeyPurpose
MAC: KeyPurpose
SIGN_VERIFY: KeyPurpose
ALGORITHM_UNSPECIFIED: Algorithm
AES_256_GCM: Algorithm
HMAC_SHA256: Algorithm
HMAC_SHA512: Algorithm
ECDSA_P256_SHA256: Algorithm
RSA_PSS_3072_SHA256: Algorithm
RSA_PSS_4096_SHA256: Algorithm
ED25519: Algorithm
KEY_ORIGIN_UNSPECIFIED: KeyOrigin
GENERATED: KeyOrigin
IMPORTED: KeyOrigin
VERSION_STATE_UNSPECIFIED: VersionState
ACTIVE: VersionState
DECRYPT_ONLY: VersionState
DISABLED: VersionState
SCHEDULED_FOR_DESTRUCTION: VersionState
DESTROYED: VersionState
ROTATION_REASON_UNSPECIFIED: RotationReason
MANUAL: RotationReason
SCHEDULED: RotationReason
USAGE: RotationReason
IMPORT: RotationReason
DATA_KIND_UNSPECIFIED: DataKind
PAN: DataKind
IBAN: DataKind
UK_SORT_CODE: DataKind
UK_ACCOUNT_NUMBER: DataKind
EMAIL: DataKind
PHONE: DataKind
NAME: DataKind
SECRET: DataKind
JWT: DataKind
BEARER_TOKEN: DataKind
API_KEY: DataKind
PASSWORD: DataKind
TRACK_DATA: DataKind
NATIONAL_ID: DataKind
DATE_OF_BIRTH: DataKind
ADDRESS: DataKind
CUSTOM: DataKind

class MacRequest(_message.Message):
    __slots__ = ("key", "data", "key_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    key_version: int
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class MacResponse(_message.Message):
    __slots__ = ("mac", "key_version")
    MAC_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    mac: bytes
    key_version: int
    def __init__(self, mac: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class MacBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MacRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[MacRequest, _Mapping]]] = ...) -> None: ...

class MacBatchItem(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: MacResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[MacResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class MacBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MacBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[MacBatchItem, _Mapping]]] = ...) -> None: ...

class VerifyMacRequest(_message.Message):
    __slots__ = ("key", "data", "mac", "key_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    mac: bytes
    key_version: int
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ..., mac: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class VerifyMacResponse(_message.Message):
    __slots__ = ("valid", "key_version")
    VALID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    key_version: int
    def __init__(self, valid: _Optional[bool] = ..., key_version: _Optional[int] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("key", "message", "digest", "encoding")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    key: str
    message: bytes
    digest: bytes
    encoding: SignatureEncoding
    def __init__(self, key: _Optional[str] = ..., message: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., encoding: _Optional[_Union[SignatureEncoding, str]] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("signature", "key_version", "algorithm")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    key_version: int
    algorithm: Algorithm
    def __init__(self, signature: _Optional[bytes] = ..., key_version: _Optional[int] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("key", "key_version", "message", "digest", "signature", "encoding")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_version: int
    message: bytes
    digest: bytes
    signature: bytes
    encoding: SignatureEncoding
    def __init__(self, key: _Optional[str] = ..., key_version: _Optional[int] = ..., message: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., encoding: _Optional[_Union[SignatureEncoding, str]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("valid", "key_version")
    VALID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    key_version: int
    def __init__(self, valid: _Optional[bool] = ..., key_version: _Optional[int] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("key", "key_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_version: int
    def __init__(self, key: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("pem", "jwk", "algorithm", "key_version", "kid")
    PEM_FIELD_NUMBER: _ClassVar[int]
    JWK_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    pem: str
    jwk: str
    algorithm: Algorithm
    key_version: int
    kid: str
    def __init__(self, pem: _Optional[str] = ..., jwk: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., key_version: _Optional[int] = ..., kid: _Optional[str] = ...) -> None: ...

class RewrapRequest(_message.Message):
    __slots__ = ("key", "ciphertext", "associated_data")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATED_DATA_FIELD_NUMBER: _ClassVar[int]
    key: str
    ciphertext: bytes
    associated_data: bytes
    def __init__(self, key: _Optional[str] = ..., ciphertext: _Optional[bytes] = ..., associated_data: _Optional[bytes] = ...) -> None: ...

class RewrapResponse(_message.Message):
    __slots__ = ("ciphertext", "key_version", "source_key_version")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    key_version: int
    source_key_version: int
    def __init__(self, ciphertext: _Optional[bytes] = ..., key_version: _Optional[int] = ..., source_key_version: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EncryptBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EncryptRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[EncryptRequest, _Mapping]]] = ...) -> None: ...

class EncryptBatchItem(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: EncryptResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[EncryptResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class EncryptBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EncryptBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[EncryptBatchItem, _Mapping]]] = ...) -> None: ...

class DecryptBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DecryptRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[DecryptRequest, _Mapping]]] = ...) -> None: ...

class DecryptBatchItem(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: DecryptResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[DecryptResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class DecryptBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DecryptBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[DecryptBatchItem, _Mapping]]] = ...) -> None: ...

class RewrapBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RewrapRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[RewrapRequest, _Mapping]]] = ...) -> None: ...

class RewrapBatchItem(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: RewrapResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[RewrapResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class RewrapBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RewrapBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RewrapBatchItem, _Mapping]]] = ...) -> None: ...

class GenerateDataKeyRequest(_message.Message):
    __slots__ = ("key", "bits", "associated_data")
    KEY_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATED_DATA_FIELD_NUMBER: _ClassVar[int]
    key: str
    bits: int
    associated_data: bytes
    def __init__(self, key: _Optional[str] = ..., bits: _Optional[int] = ..., associated_data: _Optional[bytes] = ...) -> None: ...

class GenerateDataKeyResponse(_message.Message):
    __slots__ = ("plaintext", "ciphertext", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    ciphertext: bytes
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("key", "plaintext", "associated_data")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATED_DATA_FIELD_NUMBER: _ClassVar[int]
    key: str
    plaintext: bytes
    associated_data: bytes
    def __init__(self, key: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., associated_data: _Optional[bytes] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("ciphertext", "key_version")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    key_version: int
    def __init__(self, ciphertext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("key", "ciphertext", "associated_data")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATED_DATA_FIELD_NUMBER: _ClassVar[int]
    key: str
    ciphertext: bytes
    associated_data: bytes
    def __init__(self, key: _Optional[str] = ..., ciphertext: _Optional[bytes] = ..., associated_data: _Optional[bytes] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("plaintext", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class CreateImportJobRequest(_message.Message):
    __slots__ = ("key", "ttl_seconds")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    ttl_seconds: int
    def __init__(self, key: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ImportJob(_message.Message):
    __slots__ = ("id", "key", "public_key_pem", "wrapping_method", "created_at", "expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    WRAPPING_METHOD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    key: str
    public_key_pem: str
    wrapping_method: str
    created_at: int
    expires_at: int
    def __init__(self, id: _Optional[str] = ..., key: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., wrapping_method: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ...) -> None: ...

class GetImportJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ImportKeyVersionRequest(_message.Message):
    __slots__ = ("key", "import_job", "wrapped_key", "algorithm", "policy", "exportable")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IMPORT_JOB_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPORTABLE_FIELD_NUMBER: _ClassVar[int]
    key: str
    import_job: str
    wrapped_key: bytes
    algorithm: Algorithm
    policy: KeyPolicy
    exportable: bool
    def __init__(self, key: _Optional[str] = ..., import_job: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., policy: _Optional[_Union[KeyPolicy, _Mapping]] = ..., exportable: _Optional[bool] = ...) -> None: ...

class ExportKeyVersionRequest(_message.Message):
    __slots__ = ("key", "version", "wrapping_public_key_pem")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WRAPPING_PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    wrapping_public_key_pem: str
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., wrapping_public_key_pem: _Optional[str] = ...) -> None: ...

class ExportKeyVersionResponse(_message.Message):
    __slots__ = ("wrapped_key", "algorithm", "version")
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    wrapped_key: bytes
    algorithm: Algorithm
    version: int
    def __init__(self, wrapped_key: _Optional[bytes] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., version: _Optional[int] = ...) -> None: ...

class RestoreChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("records", "keys")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    records: int
    keys: int
    def __init__(self, records: _Optional[int] = ..., keys: _Optional[int] = ...) -> None: ...

class KeyPolicy(_message.Message):
    __slots__ = ("rotation_period_seconds", "max_encryptions_per_version", "min_decryption_version", "min_encryption_version", "deletion_allowed", "manual_rotation_resets_schedule", "purpose", "allow_token_rotation", "allow_generated_rotation")
    ROTATION_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENCRYPTIONS_PER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_ENCRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETION_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    MANUAL_ROTATION_RESETS_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_TOKEN_ROTATION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_GENERATED_ROTATION_FIELD_NUMBER: _ClassVar[int]
    rotation_period_seconds: int
    max_encryptions_per_version: int
    min_decryption_version: int
    min_encryption_version: int
    deletion_allowed: bool
    manual_rotation_resets_schedule: bool
    purpose: KeyPurpose
    allow_token_rotation: bool
    allow_generated_rotation: bool
    def __init__(self, rotation_period_seconds: _Optional[int] = ..., max_encryptions_per_version: _Optional[int] = ..., min_decryption_version: _Optional[int] = ..., min_encryption_version: _Optional[int] = ..., deletion_allowed: _Optional[bool] = ..., manual_rotation_resets_schedule: _Optional[bool] = ..., purpose: _Optional[_Union[KeyPurpose, str]] = ..., allow_token_rotation: _Optional[bool] = ..., allow_generated_rotation: _Optional[bool] = ...) -> None: ...

class UpdateKeyPolicyRequest(_message.Message):
    __slots__ = ("name", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: KeyPolicy
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[KeyPolicy, _Mapping]] = ...) -> None: ...

class SetVersionStateRequest(_message.Message):
    __slots__ = ("name", "version", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: VersionState
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[VersionState, str]] = ...) -> None: ...

class ScheduleVersionDestructionRequest(_message.Message):
    __slots__ = ("name", "version", "waiting_period_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    waiting_period_seconds: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., waiting_period_seconds: _Optional[int] = ...) -> None: ...

class CancelVersionDestructionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ScheduleKeyDeletionRequest(_message.Message):
    __slots__ = ("name", "waiting_period_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAITING_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    waiting_period_seconds: int
    def __init__(self, name: _Optional[str] = ..., waiting_period_seconds: _Optional[int] = ...) -> None: ...

class CancelKeyDeletionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data", "total_records")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_records: int
    def __init__(self, data: _Optional[bytes] = ..., total_records: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "algorithm", "policy", "exportable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPORTABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    algorithm: Algorithm
    policy: KeyPolicy
    exportable: bool
    def __init__(self, name: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., policy: _Optional[_Union[KeyPolicy, _Mapping]] = ..., exportable: _Optional[bool] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("names", "next_page_token")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RotationEvent(_message.Message):
    __slots__ = ("at", "from_version", "to_version", "reason")
    AT_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    at: int
    from_version: int
    to_version: int
    reason: RotationReason
    def __init__(self, at: _Optional[int] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., reason: _Optional[_Union[RotationReason, str]] = ...) -> None: ...

class KeyVersionInfo(_message.Message):
    __slots__ = ("version", "state", "created_at", "destroy_at", "encryptions", "decryptions", "last_used_at", "origin")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DESTROY_AT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    DECRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: VersionState
    created_at: int
    destroy_at: int
    encryptions: int
    decryptions: int
    last_used_at: int
    origin: KeyOrigin
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[VersionState, str]] = ..., created_at: _Optional[int] = ..., destroy_at: _Optional[int] = ..., encryptions: _Optional[int] = ..., decryptions: _Optional[int] = ..., last_used_at: _Optional[int] = ..., origin: _Optional[_Union[KeyOrigin, str]] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("name", "algorithm", "primary_version", "created_at", "versions", "policy", "next_rotation_at", "rotations", "delete_at", "exportable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    DELETE_AT_FIELD_NUMBER: _ClassVar[int]
    EXPORTABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    algorithm: Algorithm
    primary_version: int
    created_at: int
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersionInfo]
    policy: KeyPolicy
    next_rotation_at: int
    rotations: _containers.RepeatedCompositeFieldContainer[RotationEvent]
    delete_at: int
    exportable: bool
    def __init__(self, name: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., primary_version: _Optional[int] = ..., created_at: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[KeyVersionInfo, _Mapping]]] = ..., policy: _Optional[_Union[KeyPolicy, _Mapping]] = ..., next_rotation_at: _Optional[int] = ..., rotations: _Optional[_Iterable[_Union[RotationEvent, _Mapping]]] = ..., delete_at: _Optional[int] = ..., exportable: _Optional[bool] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnrollOfficerRequest(_message.Message):
    __slots__ = ("identity", "replace")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    identity: str
    replace: bool
    def __init__(self, identity: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class EnrollOfficerResponse(_message.Message):
    __slots__ = ("otpauth_uri", "secret_base32", "claim_by")
    OTPAUTH_URI_FIELD_NUMBER: _ClassVar[int]
    SECRET_BASE32_FIELD_NUMBER: _ClassVar[int]
    CLAIM_BY_FIELD_NUMBER: _ClassVar[int]
    otpauth_uri: str
    secret_base32: str
    claim_by: int
    def __init__(self, otpauth_uri: _Optional[str] = ..., secret_base32: _Optional[str] = ..., claim_by: _Optional[int] = ...) -> None: ...

class ClaimOfficerSecretRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "operation", "key", "requester", "description", "created_at", "expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    operation: str
    key: str
    requester: str
    description: str
    created_at: int
    expires_at: int
    def __init__(self, id: _Optional[str] = ..., operation: _Optional[str] = ..., key: _Optional[str] = ..., requester: _Optional[str] = ..., description: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ApproveResponse(_message.Message):
    __slots__ = ("result", "payload")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    result: str
    payload: bytes
    def __init__(self, result: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class RejectRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RejectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditHeadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditHeadResponse(_message.Message):
    __slots__ = ("seq", "hash", "file_first_seq", "first_seq")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FILE_FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: str
    file_first_seq: int
    first_seq: int
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[str] = ..., file_first_seq: _Optional[int] = ..., first_seq: _Optional[int] = ...) -> None: ...

class AuditChunk(_message.Message):
    __slots__ = ("data", "head")
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    head: AuditHeadResponse
    def __init__(self, data: _Optional[bytes] = ..., head: _Optional[_Union[AuditHeadResponse, _Mapping]] = ...) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "records", "first_seq", "last_seq", "broken_line", "broken_seq", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    BROKEN_LINE_FIELD_NUMBER: _ClassVar[int]
    BROKEN_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    first_seq: int
    last_seq: int
    broken_line: int
    broken_seq: int
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., broken_line: _Optional[int] = ..., broken_seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "started_at", "uptime_seconds", "keys", "next_scheduled_at", "serving", "versions_by_state", "backend", "scheduler_leader", "leader", "leader_term", "leader_terms_won", "fenced_writes", "cache_age_ms", "max_staleness_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERMS_WON_FIELD_NUMBER: _ClassVar[int]
    FENCED_WRITES_FIELD_NUMBER: _ClassVar[int]
    CACHE_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    started_at: int
    uptime_seconds: int
    keys: int
    next_scheduled_at: int
    serving: bool
    versions_by_state: _containers.RepeatedScalarFieldContainer[int]
    backend: str
    scheduler_leader: bool
    leader: str
    leader_term: int
    leader_terms_won: int
    fenced_writes: int
    cache_age_ms: int
    max_staleness_ms: int
    def __init__(self, version: _Optional[str] = ..., started_at: _Optional[int] = ..., uptime_seconds: _Optional[int] = ..., keys: _Optional[int] = ..., next_scheduled_at: _Optional[int] = ..., serving: _Optional[bool] = ..., versions_by_state: _Optional[_Iterable[int]] = ..., backend: _Optional[str] = ..., scheduler_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., leader_term: _Optional[int] = ..., leader_terms_won: _Optional[int] = ..., fenced_writes: _Optional[int] = ..., cache_age_ms: _Optional[int] = ..., max_staleness_ms: _Optional[int] = ...) -> None: ...

class MaskRequest(_message.Message):
    __slots__ = ("value", "kind", "pan_keep_bin")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAN_KEEP_BIN_FIELD_NUMBER: _ClassVar[int]
    value: str
    kind: DataKind
    pan_keep_bin: int
    def __init__(self, value: _Optional[str] = ..., kind: _Optional[_Union[DataKind, str]] = ..., pan_keep_bin: _Optional[int] = ...) -> None: ...

class MaskResponse(_message.Message):
    __slots__ = ("masked", "valid")
    MASKED_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    masked: str
    valid: bool
    def __init__(self, masked: _Optional[str] = ..., valid: _Optional[bool] = ...) -> None: ...

class RedactRequest(_message.Message):
    __slots__ = ("text", "kinds")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    kinds: _containers.RepeatedScalarFieldContainer[DataKind]
    def __init__(self, text: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[DataKind, str]]] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("kind", "start", "end")
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    kind: DataKind
    start: int
    end: int
    def __init__(self, kind: _Optional[_Union[DataKind, str]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class RedactResponse(_message.Message):
    __slots__ = ("text", "findings")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    text: str
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    def __init__(self, text: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("key", "value", "kind")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    kind: DataKind
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., kind: _Optional[_Union[DataKind, str]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("token", "key_version")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    token: str
    key_version: int
    def __init__(self, token: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("key", "token", "kind", "key_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    token: str
    kind: DataKind
    key_version: int
    def __init__(self, key: _Optional[str] = ..., token: _Optional[str] = ..., kind: _Optional[_Union[DataKind, str]] = ..., key_version: _Optional[int] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...
