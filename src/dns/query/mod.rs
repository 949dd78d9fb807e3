//! One query to its answer: the precomputed fast table (`fast`) answers the common
//! questions without parsing into hickory types; everything else goes through hickory's
//! message types (`handler`), with the client located by ECS or source address (`ecs`),
//! steering decided in `decide`, decisions cached per network (`decisions`), and response rate limiting
//! (`rrl`) before anything is sent, DNS cookies (`cookie`, pure), and the DNSSEC records of signed answers (`signed`).

pub mod challenge;
pub mod cookie;
pub mod decide;
pub mod decisions;
pub mod ecs;
pub mod fast;
pub mod fast_answer;
pub mod handler;
pub mod pick;
pub mod plan;
pub mod reply;
pub mod rrl;
pub mod signed;
