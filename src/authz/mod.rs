//! Who may do what, and the proofs that go with it.
//!
//! - [`policy`]: the policy file (identities → roles → allow/deny rules;
//!   deny wins) and the operations it names ([`Op`]).
//! - [`access`]: the checks every call goes through ([`Access`]): policy,
//!   second factor, durable intent record, and the outcome record of each
//!   [`Call`].
//! - [`otp`]: the officer second factor (TOTP codes, replay and lock-out).
//! - [`officer`]: officer enrolment records (sealed TOTP secrets, offers
//!   and claims).
//! - [`dual`]: dual control (pending requests, approval, rejection,
//!   execution); `pending`: the requests kept sealed in the store, shared
//!   by the nodes of a cluster and decided once by compare-and-swap.
//!
//! Never touches key material; key rings are changed only through
//! [`crate::rings`].
pub mod access;
pub mod dual;
pub mod officer;
pub mod otp;
mod pending;
pub mod policy;

pub use access::{Access, AccessError, BatchPart, Call, SecondFactorError, OTP_HEADER};
pub use dual::{Pending, PendingLimits, PendingOp, APPROVAL_HEADER};
pub use policy::{dev_policy, glob, Denied, Op, Policy, PolicyError, Settings};
