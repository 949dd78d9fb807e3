//! What an answer will hold, decided before it is encoded: the rcode, the records
//! (borrowed from the state snapshot), the ECS scope, and what steering chose.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;

/// What to send back, borrowed from the state snapshot.
pub struct Plan<'a> {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<&'a Record>,
    pub authority: &'a [Record],
    /// Echo the client's ECS option with this scope.
    pub ecs_scope: Option<u8>,
    /// Steering outcome, for metrics: (region, fail_open).
    pub steered: Option<(usize, bool)>,
    /// The zone that answered, for signing.
    pub zone: Option<&'a crate::dns::zone::Zone>,
    /// Answers made for this query (a steered name's HTTPS record), after `answers`.
    pub made: Vec<Record>,
}

impl<'a> Plan<'a> {
    pub fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: &[],
            ecs_scope: None,
            steered: None,
            zone: None,
            made: Vec::new(),
        }
    }

    pub fn authoritative(
        answers: Vec<&'a Record>,
        authority: &'a [Record],
        rcode: ResponseCode,
    ) -> Self {
        Self {
            rcode,
            authoritative: true,
            answers,
            authority,
            ecs_scope: Some(0),
            steered: None,
            zone: None,
            made: Vec::new(),
        }
    }
}
