//! What the scanhook gateway and worker have in common.

pub mod admin;
pub mod broker;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod entities;
pub mod event;
pub mod metrics;
pub mod shutdown;
pub mod statements;
pub mod telemetry;
pub mod topology;
pub mod trace;

pub use config::{Needs, Secret, Settings};
pub use event::ScanEvent;
pub use topology::Topology;
