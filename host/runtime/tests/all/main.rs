//! The runtime's integration tests, in one binary so the suite links once.

mod support;

mod loading;
mod migration;
mod sandbox;
mod smoke;
mod snapshots;
