//! The control client: one request, one answer, the guest's stdio passed back as descriptors.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Sends one request to the server in `dir` and returns its answer and any passed descriptors.
/// Blocking: call it from a blocking context (or `spawn_blocking`).
pub fn request<T: Serialize>(dir: &Path, req: &T) -> Result<(Answer, Vec<OwnedFd>), ControlError> {
    let path = dir.join(CONTROL_SOCKET);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| ControlError::Connect {
            path: path.clone(),
            source,
        })?;
    let io_err = |e| ControlError::Io(path.clone(), e);
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut got = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !got.ends_with(b"\n") {
        let (n, got_fds) = crate::sys::scm::recv_with_fds(stream.as_fd(), &mut buf).map_err(io_err)?;
        fds.extend(got_fds);
        if n == 0 {
            return Err(ControlError::BadAnswer(
                "the server closed without answering".into(),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let answer: Answer = serde_json::from_slice(&got).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    if !answer.ok {
        return Err(ControlError::Remote(
            answer.error.unwrap_or_else(|| "unknown error".into()),
        ));
    }
    Ok((answer, fds))
}

/// [`request`] from async code.
pub async fn request_async<T: Serialize + Send + 'static>(
    dir: &Path,
    req: T,
) -> Result<(Answer, Vec<OwnedFd>), ControlError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || request(&dir, &req))
        .await
        .map_err(|e| ControlError::BadAnswer(format!("request task failed: {e}")))?
}

/// Turns the descriptors of a `start`/`exec` answer back into [`HostStdio`]. Needs a runtime.
pub fn stdio_from_fds(answer: &Answer, fds: Vec<OwnedFd>) -> Result<HostStdio, ControlError> {
    let which = answer.stdio.unwrap_or([false; 3]);
    let mut fds = fds.into_iter();
    let mut take = |wanted: bool| -> Result<Option<UnixStream>, ControlError> {
        if !wanted {
            return Ok(None);
        }
        let fd = fds
            .next()
            .ok_or_else(|| ControlError::BadAnswer("missing stdio descriptor".into()))?;
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)
            .map_err(|e| ControlError::Io(PathBuf::from("stdio"), e))?;
        UnixStream::from_std(std)
            .map(Some)
            .map_err(|e| ControlError::Io(PathBuf::from("stdio"), e))
    };
    Ok(HostStdio {
        stdin: take(which[0])?,
        stdout: take(which[1])?,
        stderr: take(which[2])?,
    })
}
