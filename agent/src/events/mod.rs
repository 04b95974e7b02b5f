//! Events from the kernel: read from the ring buffer, decoded, named from the model, and
//! handed to the sinks (for now the JSON log).

pub mod deny;
pub mod reader;
