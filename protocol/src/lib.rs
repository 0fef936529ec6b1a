//! rgcs-protocol
