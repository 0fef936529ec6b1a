//! rgcs-host-shim
