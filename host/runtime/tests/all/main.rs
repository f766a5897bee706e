//! The runtime's integration tests, in one binary so the suite links once.

mod support;

mod loading;
mod sandbox;
mod smoke;
mod snapshots;
