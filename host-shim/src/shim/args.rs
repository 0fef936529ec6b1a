//! The shim's command line as containerd writes it: Go `flag` style (single dash, `-flag value`
//! or `-flag=value`, booleans bare), then the action (`start`, `delete`). `serve` is our own
//! action: the daemon `start` leaves behind.

use std::fmt;

/// What the shim was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start (or find) the shim serving this task; print its address.
    Start,
    /// Clean up after a task whose shim may be dead; print a `DeleteResponse`.
    Delete,
    /// The daemon: serve the task API on the inherited socket.
    Serve,
    /// Print the version.
    Version,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// containerd namespace (`-namespace`).
    pub namespace: String,
    /// containerd's gRPC socket (`-address`); part of the shim socket's name.
    pub address: String,
    /// The containerd binary, for `publish` (`-publish-binary`; unused: we publish over ttrpc).
    pub publish_binary: String,
    /// Task ID (`-id`).
    pub id: String,
    /// Bundle directory (`-bundle`, given to `delete`; otherwise the working directory).
    pub bundle: Option<String>,
    /// containerd runs at debug level (`-debug`).
    pub debug: bool,
    /// The action.
    pub action: Action,
}

/// A command line the shim does not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsError(pub String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgsError {}

impl Args {
    /// Parses `args` (without the program name).
    pub fn parse<I, S>(args: I) -> Result<Self, ArgsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut a = Self {
            namespace: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            id: String::new(),
            bundle: None,
            debug: false,
            action: Action::Version,
        };
        let mut action = None;
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                if action.is_some() {
                    return Err(ArgsError(format!("unexpected argument {arg:?}")));
                }
                action = Some(match arg.as_str() {
                    "start" => Action::Start,
                    "delete" => Action::Delete,
                    "serve" => Action::Serve,
                    _ => return Err(ArgsError(format!("unknown action {arg:?} (start, delete)"))),
                });
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            match name {
                "debug" => a.debug = inline.as_deref().is_none_or(|v| v != "false"),
                "v" | "version" => {
                    return Ok(Self {
                        action: Action::Version,
                        ..a
                    })
                }
                "namespace" | "address" | "publish-binary" | "id" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .ok_or_else(|| ArgsError(format!("flag -{name} needs a value")))?,
                    };
                    match name {
                        "namespace" => a.namespace = value,
                        "address" => a.address = value,
                        "publish-binary" => a.publish_binary = value,
                        "id" => a.id = value,
                        "bundle" => a.bundle = Some(value),
                        _ => {}
                    }
                }
                _ => return Err(ArgsError(format!("unknown flag -{name}"))),
            }
        }
        a.action = action.ok_or_else(|| ArgsError("no action (start, delete)".into()))?;
        if a.namespace.is_empty() {
            return Err(ArgsError("-namespace is required".into()));
        }
        if a.id.is_empty() {
            return Err(ArgsError("-id is required".into()));
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn containerd_command_lines_parse() {
        let a = Args::parse([
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(a.action, Action::Start);
        assert_eq!((a.namespace.as_str(), a.id.as_str()), ("k8s.io", "abc"));
        assert!(a.debug);
        let a = Args::parse(["-namespace=default", "-id=x", "-bundle", "/b", "delete"]).unwrap();
        assert_eq!((a.action, a.bundle.as_deref()), (Action::Delete, Some("/b")));
        assert_eq!(Args::parse(["-v"]).unwrap().action, Action::Version);
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for bad in [
            &["-namespace", "n", "-id", "x"][..],
            &["-namespace", "n", "-id", "x", "frobnicate"],
            &["-namespace", "n", "-id"],
            &["-namespace", "n", "-id", "x", "-nope", "start"],
            &["-id", "x", "start"],
            &["-namespace", "n", "start"],
            &["-namespace", "n", "-id", "x", "start", "delete"],
        ] {
            assert!(Args::parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }
}
