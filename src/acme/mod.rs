//! ACME (RFC 8555) parts both faces share. A proxy that gets its certificates by
//! `dns-01` sends each challenge over the signed channel its health reports use; every
//! DNS server it reports to publishes it in an expiring table and answers
//! `_acme-challenge.NAME TXT` from it; and the proxy asks the ACME server to validate
//! only once every DNS server has said it serves the record. What lives here is pure:
//! the message, the table, and when a certificate is due.

pub mod challenge;
pub mod renewal;
pub mod table;
