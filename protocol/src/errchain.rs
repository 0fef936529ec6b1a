//! One way to print an error with its causes, used by both sides: `outer: cause: root cause`
//! (what `anyhow` prints for `{:#}`), each message once.

use std::error::Error;
use std::fmt;

/// Displays `error` followed by every `source()`, separated by `": "`.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `error` and its causes as one line (see [`ErrorChain`]).
pub fn error_chain(error: &dyn Error) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn every_cause_once_in_order() {
        let e = Outer(Inner(std::io::Error::other("root")));
        assert_eq!(error_chain(&e), "outer: inner: root");
        assert_eq!(
            format!("{}", ErrorChain(&Inner(std::io::Error::other("x")))),
            "inner: x"
        );
    }
}
