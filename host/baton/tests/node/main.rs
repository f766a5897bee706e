//! `baton serve` as a real process on loopback: bad input, resume, retries,
//! and `kill -9` recovery.

mod support;

mod cli;
mod cluster;
mod edge;
mod lifecycle;
mod recovery;
mod websocket;
