//! Stage 4, the cache on the request path, for routes that cache: look up, decide by the
//! RFC 9111 rules in `crate::cache`, answer from the store (`respond`), or fetch through
//! `upstream` (coalesced) and store what may be stored. Routes without the cache skip
//! this stage.

pub mod respond;
pub mod serve;
