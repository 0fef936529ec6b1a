//! rgcs-init
