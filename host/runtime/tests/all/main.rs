//! The runtime's integration tests, in one binary so the suite links once.

mod support;

mod smoke;
