//! rgcs-tests
