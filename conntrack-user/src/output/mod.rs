//! What ct-trace prints: every report type, text and JSON (`report`), and the summary's table
//! tally (`table`).

pub mod report;
pub mod table;
