//! [`StoreError`]: what a failed statement means, decided once here from the SQLSTATE or the connection's state, so
//! that the layers above never look at `tokio_postgres` or `deadpool_postgres` errors to decide what to do.

use std::fmt;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;
use tokio_postgres::row::RowIndex;
use tokio_postgres::types::FromSql;

/// What the store's functions return.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store function failed, by what it means to the caller. The original error stays the `source` wherever there
/// is one, so logs keep PostgreSQL's detail.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No usable connection: none from the pool (time-out, pool closed, the server unreachable), or the connection
    /// broke, was closed or timed out: any driver error without a SQLSTATE (which also covers the driver's own
    /// refusals, e.g. an unexpected row count, always treated so). The caller may retry.
    #[error("no database connection: {}", chain(.source.as_ref()))]
    Unavailable {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// PostgreSQL answered "not now" (SQLSTATE class 08 connection, 53 resources, 57 operator intervention such as
    /// shutdown or cancellation; 40001 serialization failure, 40P01 deadlock, 25006 read-only transaction during a
    /// failover, 55P03 lock not available). The statement was not applied; retrying may succeed.
    #[error("the database cannot do this now: {}", chain(.0))]
    Transient(#[source] tokio_postgres::Error),
    /// PostgreSQL refused to open a new connection for a reason retrying does not fix by itself (authentication
    /// failed, no such database, …): a configuration problem.
    #[error("the database refused the connection: {}", chain(.0))]
    Refused(#[source] tokio_postgres::Error),
    /// A unique constraint (named when PostgreSQL says which) already holds this value.
    #[error("unique violation: {}", chain(.source))]
    Conflict {
        constraint: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A foreign key: other rows refer to this one, or this one refers to a missing row.
    #[error("foreign key violation: {}", chain(.source))]
    Referenced {
        constraint: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A value PostgreSQL does not accept (SQLSTATE class 22, data exception: NUL in text, invalid syntax for the
    /// type, a number out of the type's range, …). `message` is PostgreSQL's.
    #[error("value rejected: {message}")]
    Rejected {
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A check constraint: a value is out of its allowed range.
    #[error("check violation: {}", chain(.source))]
    OutOfRange {
        constraint: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A row was read but one of its columns could not be (wrong type, unexpected NULL, no such column): the
    /// message says which.
    #[error("unreadable row: {0}")]
    Unreadable(String),
    /// Anything else (a bug, a statement PostgreSQL refused for another reason).
    #[error("{}", chain(.0))]
    Other(#[source] tokio_postgres::Error),
}

/// An error and its sources on one line ("db error: ERROR: duplicate key value violates …"): `tokio_postgres` shows
/// only its kind ("db error") and keeps PostgreSQL's message in its source. A source whose text already ends the line
/// is not repeated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line
}

impl StoreError {
    /// No usable connection: nothing was decided, and the caller may retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Retrying may succeed: no connection ([`StoreError::Unavailable`]) or PostgreSQL said "not now"
    /// ([`StoreError::Transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Transient(_))
    }
}

/// SQLSTATEs after which the same statement may succeed later (see [`StoreError::Transient`]).
fn is_transient_code(code: &SqlState) -> bool {
    let c = code.code();
    ["08", "53", "57"].iter().any(|class| c.starts_with(class)) || matches!(c, "40001" | "40P01" | "25006" | "55P03")
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let constraint = |e: &tokio_postgres::Error| e.as_db_error().and_then(|d| d.constraint()).map(str::to_owned);
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection (I/O, closed, time-out), not the statement. (A column that cannot be read
            // has none either: the store reads columns with `Columns::column`, which says `Unreadable`.)
            return Self::Unavailable { source: Box::new(e) };
        };
        if *code == SqlState::UNIQUE_VIOLATION {
            Self::Conflict { constraint: constraint(&e), source: e }
        } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
            Self::Referenced { constraint: constraint(&e), source: e }
        } else if code.code().starts_with("22") {
            let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string());
            Self::Rejected { message, source: e }
        } else if *code == SqlState::CHECK_VIOLATION {
            Self::OutOfRange { constraint: constraint(&e), source: e }
        } else if is_transient_code(code) {
            Self::Transient(e)
        } else {
            Self::Other(e)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            // Opening a connection failed with a SQLSTATE that is not "not now" (e.g. 28P01, authentication).
            PoolError::Backend(b) if b.code().is_some_and(|c| !is_transient_code(c)) => Self::Refused(b),
            // Waiting for a slot or a new connection timed out, the pool is closed, the server is unreachable.
            other => Self::Unavailable { source: Box::new(other) },
        }
    }
}

/// Reading a column of a row, a failure being [`StoreError::Unreadable`] (not a connection problem).
pub(crate) trait Columns {
    /// [`tokio_postgres::Row::try_get`], failing as [`StoreError::Unreadable`] with its message.
    fn column<'a, I, T>(&'a self, idx: I) -> StoreResult<T>
    where
        I: RowIndex + fmt::Display,
        T: FromSql<'a>;
}

impl Columns for tokio_postgres::Row {
    fn column<'a, I, T>(&'a self, idx: I) -> StoreResult<T>
    where
        I: RowIndex + fmt::Display,
        T: FromSql<'a>,
    {
        self.try_get(idx).map_err(|e| StoreError::Unreadable(chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_postgres::{HookError, Manager, Pool, Runtime, TimeoutType};

    fn url() -> String {
        let base = std::env::var("HGTEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        format!("{base}/postgres")
    }

    async fn connect() -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("the test PostgreSQL (HGTEST_PG) is up");
        tokio::spawn(conn);
        client
    }

    /// An error carrying `code`, as PostgreSQL sends it.
    async fn raised(client: &tokio_postgres::Client, code: &str) -> tokio_postgres::Error {
        let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'hgtest' USING ERRCODE = '{code}'; END $$");
        client.batch_execute(&sql).await.expect_err(code)
    }

    /// Runs `sql` inside a savepoint of the open transaction and answers its error (the savepoint is rolled back, so
    /// the transaction stays usable for the next case).
    async fn failure_of(client: &tokio_postgres::Client, sql: &str) -> tokio_postgres::Error {
        client.batch_execute("SAVEPOINT hgtest_case").await.unwrap();
        let e = client.batch_execute(sql).await.expect_err(sql);
        client.batch_execute("ROLLBACK TO SAVEPOINT hgtest_case").await.unwrap();
        e
    }

    #[tokio::test]
    async fn a_statement_failure_is_classified_by_its_sqlstate() {
        let client = connect().await;
        // Temporary tables in a transaction that is rolled back: nothing is left behind, nothing is shared.
        client
            .batch_execute(
                "BEGIN;
                 CREATE TEMP TABLE hgtest_parent (id int PRIMARY KEY) ON COMMIT DROP;
                 CREATE TEMP TABLE hgtest_child (
                     id int CONSTRAINT hgtest_child_pkey PRIMARY KEY,
                     n int CONSTRAINT hgtest_child_n_check CHECK (n >= 0),
                     parent int CONSTRAINT hgtest_child_parent_fkey REFERENCES hgtest_parent (id)
                 ) ON COMMIT DROP;
                 INSERT INTO hgtest_parent VALUES (1);
                 INSERT INTO hgtest_child VALUES (1, 0, 1);",
            )
            .await
            .unwrap();

        let e = StoreError::from(failure_of(&client, "INSERT INTO hgtest_child VALUES (1, 0, 1)").await);
        assert!(
            matches!(&e, StoreError::Conflict { constraint: Some(c), .. } if c == "hgtest_child_pkey"),
            "unique violation: {e:?}"
        );
        assert!(std::error::Error::source(&e).is_some(), "the original error is kept");
        assert!(e.to_string().contains("duplicate key value violates unique constraint"), "PostgreSQL's message: {e}");

        let e = StoreError::from(failure_of(&client, "INSERT INTO hgtest_child VALUES (2, 0, 42)").await);
        assert!(
            matches!(&e, StoreError::Referenced { constraint: Some(c), .. } if c == "hgtest_child_parent_fkey"),
            "foreign key violation (a missing parent): {e:?}"
        );
        let e = StoreError::from(failure_of(&client, "DELETE FROM hgtest_parent WHERE id = 1").await);
        assert!(matches!(e, StoreError::Referenced { .. }), "foreign key violation (a referenced row): {e:?}");

        let e = StoreError::from(failure_of(&client, "INSERT INTO hgtest_child VALUES (3, -1, 1)").await);
        assert!(
            matches!(&e, StoreError::OutOfRange { constraint: Some(c), .. } if c == "hgtest_child_n_check"),
            "check violation: {e:?}"
        );

        let e = StoreError::from(failure_of(&client, "SELECT 'x'::int").await);
        assert!(
            matches!(&e, StoreError::Rejected { message, .. } if message.contains("invalid input syntax")),
            "class 22 (invalid text representation): {e:?}"
        );
        let e = StoreError::from(failure_of(&client, "SELECT 2147483647::int + 1").await);
        assert!(matches!(e, StoreError::Rejected { .. }), "class 22 (integer out of range): {e:?}");

        let e = StoreError::from(failure_of(&client, "SELECT * FROM hgtest_no_such_table").await);
        assert!(matches!(e, StoreError::Other(_)), "undefined table: {e:?}");

        client.batch_execute("ROLLBACK").await.unwrap();
    }

    #[tokio::test]
    async fn a_not_now_sqlstate_is_transient_and_others_are_not() {
        let client = connect().await;
        for code in ["40001", "40P01", "55P03", "25006", "57014", "57P01", "53300", "08006"] {
            let e = StoreError::from(raised(&client, code).await);
            assert!(matches!(e, StoreError::Transient(_)), "{code}: {e:?}");
            assert!(e.is_transient() && !e.is_unavailable(), "{code}");
        }
        for code in ["42501", "P0001", "23502", "28P01"] {
            let e = StoreError::from(raised(&client, code).await);
            assert!(matches!(e, StoreError::Other(_)), "{code}: {e:?}");
            assert!(!e.is_transient(), "{code}");
        }
    }

    #[tokio::test]
    async fn a_column_that_cannot_be_read_is_unreadable_with_its_message() {
        let client = connect().await;
        let row = client.query_one("SELECT 1::int4 AS n, NULL::text AS t", &[]).await.unwrap();
        assert_eq!(row.column::<_, i32>("n").unwrap(), 1);
        let e = row.column::<_, i64>(0).unwrap_err();
        assert!(matches!(&e, StoreError::Unreadable(m) if m.contains("column 0") && m.contains("int4")), "{e:?}");
        let e = row.column::<_, String>("t").unwrap_err();
        assert!(matches!(&e, StoreError::Unreadable(m) if m.contains("column 1") && m.contains("NULL")), "{e:?}");
        let e = row.column::<_, i32>("missing").unwrap_err();
        assert!(matches!(&e, StoreError::Unreadable(m) if m.contains("missing")), "{e:?}");
        assert!(!e.is_unavailable() && !e.is_transient());
    }

    #[tokio::test]
    async fn a_closed_connection_is_unavailable() {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        drop(conn);
        let e = StoreError::from(client.simple_query("SELECT 1").await.expect_err("the connection is gone"));
        assert!(e.is_unavailable() && e.is_transient(), "{e:?}");
    }

    #[tokio::test]
    async fn every_pool_failure_is_unavailable_except_a_refused_connection() {
        for e in [
            PoolError::Timeout(TimeoutType::Wait),
            PoolError::Timeout(TimeoutType::Create),
            PoolError::Closed,
            PoolError::NoRuntimeSpecified,
            PoolError::PostCreateHook(HookError::Message("hgtest".into())),
        ] {
            let e = StoreError::from(e);
            assert!(e.is_unavailable(), "{e:?}");
        }

        // A closed pool, as a caller meets it.
        let pool = Pool::builder(Manager::new(url().parse().unwrap(), tokio_postgres::NoTls))
            .runtime(Runtime::Tokio1)
            .build()
            .unwrap();
        pool.close();
        let e = StoreError::from(pool.get().await.expect_err("the pool is closed"));
        assert!(e.is_unavailable(), "{e:?}");

        // Opening a connection failed: without a SQLSTATE (the connection broke) or with a "not now" one (too many
        // connections) it is unavailable; with another one (authentication failed) it is refused.
        let (closed, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        drop(conn);
        let broken = closed.simple_query("SELECT 1").await.unwrap_err();
        assert!(StoreError::from(PoolError::Backend(broken)).is_unavailable());
        let client = connect().await;
        assert!(StoreError::from(PoolError::Backend(raised(&client, "53300").await)).is_unavailable());
        let e = StoreError::from(PoolError::Backend(raised(&client, "28P01").await));
        assert!(matches!(e, StoreError::Refused(_)) && !e.is_transient() && !e.is_unavailable(), "{e:?}");
    }
}
