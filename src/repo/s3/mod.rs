//! Repositories in S3-compatible object storage (AWS S3, Garage, Ceph RGW,
//! MinIO, SeaweedFS): where the bucket is and how to sign for it
//! ([`settings`]), and a small synchronous client that retries and moves
//! between a cluster's endpoints ([`client`]). Packs are kept in a bucket
//! as in any object store (`repo::store`).

pub mod client;
pub mod settings;
mod socket;
pub mod throttle;

pub use client::S3Client;
pub use settings::{S3Location, S3Settings};
