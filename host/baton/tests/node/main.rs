//! `baton serve` as a real process on loopback: bad input, resume, retries,
//! and `kill -9` recovery.

mod fleet;
mod support;

mod cli;
mod cluster;
mod deploy;
mod edge;
mod lifecycle;
mod recovery;
mod upgrade;
mod websocket;
