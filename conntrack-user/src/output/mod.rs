//! What ct-trace prints: every report type, text and JSON (`report`), the output stage that
//! counts and prints them (`sink`), ct-trace's kernel counters and their notices (`counters`),
//! the exit summary with its tallies (`summary`, `table`), and the Prometheus families
//! (`metrics`), `--pcap`'s packets (`pcap`, built by `packet`, as the lab's are), stdout itself
//! (`writer`), what they need of the correlator (`correlated`, which the pipeline implements),
//! and events' times (`time`), TCP flags (`flags`), conntrack's reasons (`reason`)
//! and the words reports carry (`tags`), kept typed until they are printed.

pub mod correlated;
pub mod counters;
pub mod endpoint;
pub mod flags;
pub mod json;
pub mod lost;
pub mod metrics;
pub mod packet;
pub mod pcap;
pub mod reason;
pub mod report;
pub mod sink;
pub mod summary;
pub mod table;
pub mod tags;
pub mod time;
pub mod top;
pub mod writer;
