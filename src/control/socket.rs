//! The local admin API: a Unix socket (mode 0600, or 0660 with a configured group) carrying one
//! JSON request line and one JSON reply line per connection ([`super::protocol`]). Every
//! connection's peer credentials (`SO_PEERCRED`) are checked ([`super::peer`]). Never reachable
//! over the network. Also the client the CLI uses.

use super::error::SocketError;
use super::lock::InstanceLock;
use super::peer;
use super::protocol::{AdminReply, AdminRequest};
use super::verbs::Control;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest request line accepted (a wrapped key import is the biggest legitimate request).
const MAX_REQUEST: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin socket and serves it on its own thread until the process ends. The caller
/// proves it holds the state directory's instance lock: only the lock holder may replace a
/// socket file, so a second daemon can never unlink a running daemon's socket.
pub fn serve(
    path: &Path,
    group: Option<&str>,
    control: Arc<Control>,
    _held: &InstanceLock,
) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            return Err(SocketError::NotASocket(path.to_owned()))
        }
        // A socket left by a previous holder of the lock (a crash, or kill -9).
        Ok(_) => std::fs::remove_file(path).map_err(SocketError::RemoveStale)?,
        Err(_) => {}
    }
    let gid = group
        .map(peer::group_id)
        .transpose()
        .map_err(SocketError::Group)?;
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    listener.set_nonblocking(true).map_err(SocketError::Nonblocking)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(SocketError::Mode)?;
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(SocketError::Chown)?;
    }
    let uid = peer::own_uid();
    tracing::info!(socket = %path.display(), mode = format!("{mode:o}"), "admin socket ready");
    // The admin API runs on its own thread and runtime: under full request load an engage
    // must not queue behind request tasks for a turn on the shared runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SocketError::Runtime)?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "admin socket unusable"),
                };
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let c = control.clone();
                            tokio::spawn(async move { handle(stream, c, uid, gid).await });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .map_err(SocketError::Thread)?;
    Ok(())
}

async fn handle(stream: UnixStream, control: Arc<Control>, own_uid: u32, gid: Option<u32>) {
    // Held until the reply is written (the daemon waits for it before exiting).
    let _exchange = control.exchange();
    let Ok(cred) = stream.peer_cred() else { return };
    let allowed = peer::allowed(cred.uid(), cred.gid(), own_uid, gid);
    let (rd, mut wr) = stream.into_split();
    // The request is read even when it will be refused, so the client gets the refusal
    // instead of a reset connection.
    let mut line = String::new();
    let read = tokio::time::timeout(
        IO_TIMEOUT,
        BufReader::new(rd.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await;
    let reply = if !allowed {
        tracing::warn!(
            peer_uid = cred.uid(),
            peer_gid = cred.gid(),
            "admin request refused: peer not authorised"
        );
        AdminReply::failed("permission denied: not the daemon's user, root or the admin group")
    } else {
        match read {
            Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
                Ok(req) => control.execute(req, Some(cred.uid()), "admin-socket").await,
                Err(e) => AdminReply::failed(format!("malformed admin request: {e}")),
            },
            _ => AdminReply::failed("no request received"),
        }
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(IO_TIMEOUT, wr.write_all(&out)).await;
}

/// Why the CLI could not get an answer from a daemon.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket (no file, or nobody accepting).
    NoAnswer(PathBuf),
    /// A daemon is there but the exchange failed; whether the request ran is unknown.
    Failed(String),
}

/// Sends one request to the daemon's admin socket.
pub async fn request(path: &Path, req: &AdminRequest) -> Result<AdminReply, ClientError> {
    use std::io::ErrorKind;
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NoAnswer(path.to_owned()))
        }
        Err(e) => {
            return Err(ClientError::Failed(format!(
                "cannot connect to {}: {e}",
                path.display()
            )))
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push(b'\n');
    let exchange = async {
        wr.write_all(&line).await?;
        let mut resp = String::new();
        BufReader::new(rd).read_line(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| {
            ClientError::Failed(
                "the daemon did not answer within 30 s; the request may or may not have run".into(),
            )
        })?
        .map_err(|e| {
            ClientError::Failed(format!("admin socket: {e}; the request may or may not have run"))
        })?;
    serde_json::from_str(&resp).map_err(|e| ClientError::Failed(format!("unreadable daemon answer: {e}")))
}
