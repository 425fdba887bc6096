//! Live rows (issue 22): the leaf pieces that turn pgoutput's table changes into typed JSON rows
//! and match them against PostgREST-style subscription filters, independent of the WAL source
//! and of the protocol that will carry them.
//!
//! - [`catalog`]: a published table's columns, types and key, for subscribing;
//! - [`change`]: a decoded change as the JSON clients receive on `table:<schema>.<table>`;
//! - [`decode_metrics`]: changes per table (bounded labels) and decode lag, for /metrics;
//! - [`pgoutput`]: decoder of pgoutput (protocol 1) messages, and the relation cache;
//! - [`value`]: column text to the JSON `to_jsonb` gives;
//! - [`filter`]: PostgREST filter syntax: parser, limits, binding to columns, evaluator;
//! - [`index`]: per-table subscription index on equality conjuncts;
//! - [`subscribe`]: a client's table and filter made into a row subscription, or refused;
//! - [`snapshot`]: the rows a subscription starts from, and the seam with the change stream;
//! - [`rls`]: per-row authorization wired in: cohorts, decisions attached to frames;
//! - [`seam`]: which changes a snapshot already contains;
//! - [`selector`]: row subscriptions on a table channel, the hub's selector for it;
//! - `temporal`: dates and times as comparable numbers, for filters.
//!
//! docs/ROWS.md is the specification.

// Everything is wired; what is left unused outside tests (constructors and sizes the tests and
// fuzz targets use, `authorize::decide` for one cohort, the cohort epochs meant for recycling
// ids) is listed in the closing note of 2026-12-08 to prune or wire next.
#![allow(dead_code)]

pub mod authorize;
pub mod catalog;
pub mod change;
pub mod decode_metrics;
pub mod filter;
pub mod index;
pub mod pgoutput;
pub mod rls;
pub mod seam;
pub mod selector;
pub mod snapshot;
pub mod subscribe;
mod temporal;
pub mod value;

#[cfg(test)]
mod pg_tests;
