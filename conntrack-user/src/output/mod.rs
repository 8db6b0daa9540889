//! What ct-trace prints, rendered from the typed events of `event`: text lines (`text`), JSON
//! lines (`json`), the output stage that counts and prints them (`sink`), the exit summary
//! (`summary`, with the kernel's table counters in `table`), the Prometheus families (`metrics`), `--pcap`'s packets (`pcap`, built
//! by `packet`, as the lab's are), stdout itself (`writer`), `top`'s screen (`top`), and what
//! they need of the correlator (`correlated`, which the pipeline implements).

pub mod correlated;
pub mod json;
pub mod metrics;
pub mod packet;
pub mod pcap;
pub mod sink;
pub mod summary;
pub mod table;
pub mod text;
pub mod top;
pub mod writer;
