//! TLS between pgws and PostgreSQL, with libpq's `sslmode` meanings: a cluster of its own that
//! listens on 127.0.0.1 with a certificate for `localhost` issued by a test CA (made with the
//! `openssl` command, which Debian's PostgreSQL packages depend on).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Parser as _;
use pgws::Cli;
use pgws::embedded::Cluster;
use serde_json::json;

use crate::common::*;

struct TlsDb {
    cluster: Cluster,
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
    /// Client certificate and key for the cluster's user.
    client: (PathBuf, PathBuf),
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a second unrelated CA, a server certificate for DNS name `localhost` only, and a
/// client certificate for database user `user`.
fn make_certificates(dir: &Path, user: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "pgws test CA"), ("other", "unrelated CA")] {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        openssl(dir, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    let client_subject = format!("/CN={user}");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        &client_subject,
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.cnf"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.cnf"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        let (csr, crt, cnf) = (
            format!("{who}.csr"),
            format!("{who}.crt"),
            format!("{who}.cnf"),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &cnf,
            ],
        );
    }
}

/// SQL string literal (for `ALTER SYSTEM`, which takes no parameters).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The cluster, made once per test binary (tests that need it wait for the first to finish).
async fn tls_db() -> &'static TlsDb {
    static DB: tokio::sync::OnceCell<TlsDb> = tokio::sync::OnceCell::const_new();
    DB.get_or_init(make_tls_db).await
}

async fn make_tls_db() -> TlsDb {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start_on_tcp(port))
        .await
        .unwrap()
        .expect("start a PostgreSQL cluster on TCP");
    // Inside the cluster's directory, which goes away with the cluster.
    let home = cluster.socket_dir();
    let certs = home.join("test-certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certificates(&certs, &cluster.user);
    // Owned like the cluster's directory, so that its removal (as the postgres user when the
    // tests run as root) removes them too.
    let owner = std::fs::metadata(home).unwrap();
    let give = |path: &Path| {
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
    };
    give(&certs);
    for entry in std::fs::read_dir(&certs).unwrap() {
        give(&entry.unwrap().path());
    }
    // The server's files sit next to them (PostgreSQL refuses a key that others can read).
    for name in ["server.crt", "server.key"] {
        let to = home.join(name);
        std::fs::copy(certs.join(name), &to).unwrap();
        give(&to);
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let admin = pg(&cluster.connection_string("postgres")).await;
    let crt = home.join("server.crt");
    let key = home.join("server.key");
    // Database `clientcert` admits only clients with a certificate from the test CA.
    let admin_db = pg(&cluster.connection_string("postgres")).await;
    admin_db
        .batch_execute("CREATE DATABASE clientcert")
        .await
        .unwrap();
    let hba = home.join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl clientcert all 127.0.0.1/32 cert\nhostssl clientcert all ::1/128 cert\nhost clientcert all all reject\n{rules}"),
    )
    .unwrap();
    // One statement each: ALTER SYSTEM cannot run in the implicit transaction of a batch.
    for statement in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = {}",
            literal(&crt.display().to_string())
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = {}",
            literal(&key.display().to_string())
        ),
        format!(
            "ALTER SYSTEM SET ssl_ca_file = {}",
            literal(&certs.join("ca.pem").display().to_string())
        ),
        "ALTER SYSTEM SET ssl = on".into(),
        "SELECT pg_reload_conf()".into(),
    ] {
        admin.batch_execute(&statement).await.expect("turn TLS on");
    }
    tokio::time::timeout(WAIT, async {
        loop {
            let row = admin.query_one("SHOW ssl", &[]).await.unwrap();
            if row.get::<_, String>(0) == "on" {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("TLS on after the reload");
    TlsDb {
        cluster,
        port,
        ca: certs.join("ca.pem"),
        other_ca: certs.join("other.pem"),
        client: (certs.join("client.crt"), certs.join("client.key")),
    }
}

impl TlsDb {
    /// A fresh database and a key=value connection string to it over TCP, plus `extra`.
    async fn fresh(&self, host: &str, extra: &str) -> (String, String) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "tls{}",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let admin = pg(&self.cluster.connection_string("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let conn = format!(
            "host={host} port={} user={} dbname={name} {extra}",
            self.port, self.cluster.user
        );
        (name, conn)
    }

    /// Whether pgws's connections to database `name` use TLS: (with TLS, all).
    async fn pgws_connections(&self, name: &str) -> (i64, i64) {
        let admin = pg(&self.cluster.connection_string("postgres")).await;
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'pgws' AND a.datname = $1",
                &[&name],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
}

/// A message sent by a client comes back through PostgreSQL (NOTIFY pool and LISTEN connection).
async fn round_trip(s: &TestServer) {
    let t = token(json!({"mode": "rw"}));
    let mut ws = connect(&s.url(&format!("/chat/{t}"))).await;
    send(&mut ws, "over tls").await;
    assert_eq!(next_json(&mut ws).await["payload"], "over tls");
}

#[tokio::test]
async fn sslmode_require_encrypts_both_connections() {
    let db = tls_db().await;
    let (name, conn) = db.fresh("127.0.0.1", "sslmode=require").await;
    let s = start_on(&conn, &[]).await;
    round_trip(&s).await;
    assert_eq!(db.pgws_connections(&name).await, (2, 2));
    s.stop().await.unwrap();

    // And without TLS when told so.
    let (name, conn) = db.fresh("127.0.0.1", "sslmode=disable").await;
    let s = start_on(&conn, &[]).await;
    round_trip(&s).await;
    assert_eq!(db.pgws_connections(&name).await, (0, 2));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn verify_full_checks_chain_and_name_verify_ca_only_the_chain() {
    let db = tls_db().await;
    let ca = db.ca.display().to_string();
    // URL form, as users write it.
    let (name, _) = db.fresh("localhost", "").await;
    let url = format!(
        "postgres://{}@localhost:{}/{name}?sslmode=verify-full&sslrootcert={ca}",
        db.cluster.user, db.port
    );
    let s = start_on(&url, &[]).await;
    round_trip(&s).await;
    assert_eq!(db.pgws_connections(&name).await, (2, 2));
    s.stop().await.unwrap();

    // The certificate names `localhost`, not 127.0.0.1: verify-ca accepts it there.
    let (name, conn) = db
        .fresh(
            "127.0.0.1",
            &format!("sslmode=verify-ca sslrootcert='{ca}'"),
        )
        .await;
    let s = start_on(&conn, &[]).await;
    round_trip(&s).await;
    assert_eq!(db.pgws_connections(&name).await, (2, 2));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_that_fails_the_check_stops_start_up_with_the_reason() {
    let db = tls_db().await;
    let cases = [
        // Wrong host name for verify-full.
        (
            "127.0.0.1",
            format!("sslmode=verify-full sslrootcert={}", db.ca.display()),
            "not valid for name",
        ),
        // Chain to another CA.
        (
            "localhost",
            format!("sslmode=verify-ca sslrootcert={}", db.other_ca.display()),
            "UnknownIssuer",
        ),
    ];
    for (host, extra, reason) in cases {
        let (_, conn) = db.fresh(host, &extra).await;
        let s = spawn_on(&conn, &["--retries", "1"]).await;
        let ended = tokio::time::timeout(WAIT, s.handle_result())
            .await
            .expect("gives up in time");
        let e = ended.expect_err("start-up fails");
        assert!(e.to_string().contains(reason), "{extra}: {e}");
    }
    // verify-full without roots is a configuration error before anything connects.
    let cli = Cli::try_parse_from(args("host=localhost sslmode=verify-full", &[])).unwrap();
    let e = cli.resolve(None, None).unwrap_err().to_string();
    assert!(
        e.contains("PGWS_DB_URI") && e.contains("sslrootcert"),
        "{e}"
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_sslcert_and_sslkey_are_given() {
    let db = tls_db().await;
    let base = format!(
        "host=localhost port={} user={} dbname=clientcert sslmode=verify-full sslrootcert={}",
        db.port,
        db.cluster.user,
        db.ca.display()
    );
    let with_cert = format!(
        "{base} sslcert={} sslkey={}",
        db.client.0.display(),
        db.client.1.display()
    );
    let s = start_on(&with_cert, &[]).await;
    round_trip(&s).await;
    assert_eq!(db.pgws_connections("clientcert").await, (2, 2));
    s.stop().await.unwrap();

    // The same database refuses a connection without one, and says why.
    let s = spawn_on(&base, &["--retries", "1"]).await;
    let e = tokio::time::timeout(WAIT, s.handle_result())
        .await
        .expect("gives up in time")
        .expect_err("start-up fails");
    assert!(e.to_string().contains("client certificate"), "{e}");
}
