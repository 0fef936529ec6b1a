//! rgcs-agent
