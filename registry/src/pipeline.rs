//! Statements sent together: one round trip for several, run in the order given.
//!
//! tokio-postgres sends a request when its future is first polled, and PostgreSQL answers
//! requests in the order they came. So prepared statements whose futures are polled in turn
//! go out in one write, and the server runs them one after the other, each seeing what the
//! one before it did. A statement that fails aborts the transaction it is in, and the ones
//! after it then fail too: the first error is the one reported.
//!
//! A transaction may begin in the same round trip as its first statements ([`Begun`]);
//! `Client::transaction` cannot do that, as it waits for the answer to `BEGIN`.

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::{Error, Result};

/// The parameters of one statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One statement of a pipeline: prepared, its parameters, and what it does (for errors).
#[derive(Clone, Copy)]
pub(crate) struct Step<'a> {
    pub statement: &'a Statement,
    pub params: Params<'a>,
    pub context: &'static str,
}

impl<'a> Step<'a> {
    pub(crate) fn new(statement: &'a Statement, params: Params<'a>, context: &'static str) -> Step<'a> {
        Step { statement, params, context }
    }
}

/// Runs `steps` in one round trip; the rows of each, in order, or the first error.
pub(crate) async fn run(c: &impl GenericClient, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>> {
    each(c, steps).await.into_iter().collect()
}

/// Runs `steps` in one round trip; each one's rows or error, in order. Outside a
/// transaction each statement commits or fails on its own, and the ones after a failure
/// still run.
pub(crate) async fn each(c: &impl GenericClient, steps: &[Step<'_>]) -> Vec<Result<Vec<Row>>> {
    // join_all polls its futures in order (and drives every one to its answer), so the
    // requests are sent in the order of `steps`.
    let answers = futures::future::join_all(steps.iter().map(|s| c.query(s.statement, s.params))).await;
    answers.into_iter().zip(steps).map(|(answer, s)| answer.map_err(Error::query(s.context))).collect()
}

/// A transaction begun in a pipeline. [`Begun::commit`] ends it; dropped without that (a
/// refusal, an error, a cancelled request), it is rolled back in the background, and its
/// connection goes back to the pool only once the rollback has answered (a connection
/// whose rollback failed is closed instead). So the pool never hands out a connection
/// inside a transaction.
pub(crate) struct Begun {
    client: Option<Object>,
}

impl Begun {
    /// Begins a transaction on `client` together with `steps` (prepared on it): the rows of
    /// each step, and the open transaction.
    pub(crate) async fn start(client: Object, steps: &[Step<'_>]) -> Result<(Begun, Vec<Vec<Row>>)> {
        let begin = crate::stmt(&client, "BEGIN").await?;
        let begun = Begun { client: Some(client) };
        let mut all = Vec::with_capacity(steps.len() + 1);
        all.push(Step::new(&begin, &[], "starting a transaction"));
        all.extend_from_slice(steps);
        let mut rows = run(begun.client(), &all).await?;
        rows.remove(0);
        Ok((begun, rows))
    }

    /// The connection the transaction is on.
    pub(crate) fn client(&self) -> &Object {
        // Only commit takes the connection, and it consumes the transaction.
        self.client.as_ref().expect("a begun transaction has its connection until it ends")
    }

    /// Commits. Whatever the answer, the transaction is over (a failed commit rolls back),
    /// so the connection goes back to the pool (or is closed, if it broke).
    pub(crate) async fn commit(mut self, context: &'static str) -> Result<()> {
        let client = self.client.take().expect("a begun transaction has its connection until it ends");
        let commit = crate::stmt(&client, "COMMIT").await;
        let done = match commit {
            Ok(commit) => run(&client, &[Step::new(&commit, &[], context)]).await.map(drop),
            Err(e) => {
                // Not even prepared: the transaction is still open on this connection.
                drop(Object::take(client));
                return Err(e);
            }
        };
        drop(client);
        done
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}
