//! Servers a test starts for itself on spare ports, serving TLS with a certificate the test made: a PostgreSQL
//! cluster (`initdb`, `ssl = on`, plain TCP refused) and a `redis-server` that speaks TLS only.
//!
//! Each is a drop guard: its process is stopped by its own pid (PostgreSQL through `pg_ctl -D` on its own data
//! directory, which signals the pid in that directory's `postmaster.pid`) and its directory removed. The machine's
//! own PostgreSQL and Redis are never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

use crate::certs::Leaf;
use crate::helpers::eventually;

/// A port nobody listens on right now (bound to port 0, then released).
fn spare_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// PostgreSQL's binaries: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect("PostgreSQL's binaries (initdb, pg_ctl)")
}

/// Runs `cmd` to its end, panicking with its output when it fails.
fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary directory (mode 755, so that PostgreSQL's user reaches its part), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("hookgate-{what}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(path)
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL cluster of the test's own on 127.0.0.1:`port`, with `ssl = on` and `cert` as its certificate.
/// Over TCP it takes TLS connections only (`hostssl`, SCRAM with the password given at start); plain TCP is
/// refused. The test itself administers it over its Unix socket.
pub struct TlsPostgres {
    pub port: u16,
    bindir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    as_postgres: bool,
    // Dropped after the server is stopped (fields drop in order, after `Drop::drop`).
    _dir: TempDir,
}

impl TlsPostgres {
    /// `initdb`, the certificate and key written into the data directory, started; the `postgres` role's password
    /// set to `password`, and a database `hookgate` created.
    pub async fn start(cert: &Leaf, password: &str) -> Self {
        let dir = TempDir::new("tls-pg");
        let bindir = pg_bindir();
        let as_postgres = running_as_root();
        let socket_dir = dir.0.join("pg");
        let data = socket_dir.join("data");
        std::fs::create_dir_all(&socket_dir).unwrap();
        if as_postgres {
            run(chown(&socket_dir), "chown of the cluster's directory");
        }
        let mut initdb = pg_command(&bindir, "initdb", as_postgres);
        initdb.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "-D"]).arg(&data);
        run(initdb, "initdb");
        // TLS only over TCP: a connection that does not encrypt finds no entry and is refused.
        write_as(
            &data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            as_postgres,
        );
        write_as(&data.join("server.crt"), &cert.cert_pem, as_postgres);
        write_as(&data.join("server.key"), &cert.key_pem, as_postgres);
        let cluster = Self { port: spare_port(), bindir, data, socket_dir, as_postgres, _dir: dir };
        cluster.pg_ctl_start();
        let admin = cluster.admin("postgres").await;
        admin
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{password}'"
            ))
            .await
            .unwrap();
        admin.batch_execute("CREATE DATABASE hookgate").await.unwrap();
        cluster
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c ssl=on -c fsync=off \
             -c max_connections=40",
            self.port,
            self.socket_dir.display()
        );
        let mut c = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        c.args(["start", "-w", "-t", "120", "-l"]).arg(self.socket_dir.join("postgres.log"));
        c.arg("-o").arg(options).arg("-D").arg(&self.data);
        // Not through pipes: the server pg_ctl leaves running must not hold a pipe this process waits on.
        let status = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        let log = std::fs::read_to_string(self.socket_dir.join("postgres.log")).unwrap_or_default();
        assert!(status.success(), "pg_ctl start failed ({status}): {log}");
    }

    /// A connection of the test's own over the Unix socket (no TLS, no password).
    pub async fn admin(&self, database: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.socket_dir).port(self.port).user("postgres").dbname(database);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("the test's own cluster");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let mut c = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        c.args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"]).arg(&self.data);
        let _ = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A PostgreSQL command, run as `postgres` when the tests run as root (initdb and postgres refuse root).
fn pg_command(bindir: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join(program));
        c
    } else {
        Command::new(bindir.join(program))
    }
}

fn chown(path: &Path) -> Command {
    let mut c = Command::new("chown");
    c.arg("postgres:postgres").arg(path);
    c
}

/// Writes a file PostgreSQL reads (mode 600, the server's user its owner).
fn write_as(path: &Path, contents: &str, as_postgres: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if as_postgres {
        run(chown(path), "chown of a cluster file");
    }
}

/// A `redis-server` of the test's own on 127.0.0.1:`port`, TLS only (`--port 0`), with `cert` as its certificate
/// and no client certificate asked for; without persistence. Killed by its pid when dropped.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl TlsRedis {
    /// Starts the server; returns once it answers PING over TLS, trusting `ca_file`.
    pub async fn start(cert: &Leaf, ca_file: &Path) -> Self {
        let dir = TempDir::new("tls-redis");
        let (cert_file, key_file) = (dir.write("redis.crt", &cert.cert_pem), dir.write("redis.key", &cert.key_pem));
        let port = spare_port();
        let log = std::fs::File::create(dir.0.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .arg("--tls-ca-cert-file")
            .arg(ca_file)
            .arg("--dir")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server");
        let mut server = Self { port, child, _dir: dir };
        let client = server.client(ca_file);
        eventually("the test's own Redis to answer over TLS", Duration::from_secs(30), || {
            let exited = server.child.try_wait().unwrap();
            let log = std::fs::read_to_string(server._dir.0.join("redis.log")).unwrap_or_default();
            assert!(exited.is_none(), "redis-server exited at start ({exited:?}): {log}");
            let client = client.clone();
            async move {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
            }
        })
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// A client of the test's own, trusting `ca_file`.
    pub fn client(&self, ca_file: &Path) -> redis::Client {
        let certificates =
            redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca_file).unwrap()) };
        redis::Client::build_with_tls(self.url(), certificates).unwrap()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
