//! What every geoedge process shares, whichever face it runs: the coarse clock the
//! request paths read, signals (SIGHUP reload, graceful stop), logging setup, log files
//! that reopen on rotation, and the one "listening" line per socket that tests and
//! operators read.

pub mod clock;
pub mod listening;
pub mod logfile;
pub mod logging;
pub mod signals;
