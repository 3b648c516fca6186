//! Fenced writes: a transaction that commits only while the writer's leadership lasts, i.e. while
//! its election key still has the create revision that is its term. A failed fence tells the
//! writer another node leads now.

use autogate_store::{CompareOp, Store, StoreError, Txn, TxnOp, TxnOpResponse, TxnResponse};

/// Outcome of a fenced write that did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FencedError {
    /// This node does not act as the active node: forward the write to the active node.
    #[error("this node is not the active node")]
    NotActive,
    /// The leader key no longer has this create revision: another node leads now. The caller
    /// drops the write; leadership has already been given up.
    #[error("write rejected: term {term} is no longer the current leadership")]
    Rejected { term: u64 },
    /// The store did not answer; whether the write happened is unknown only if it timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A transaction that runs only while `term_key` still has create revision `term`, i.e. while
/// the caller's leadership of that term lasts.
///
/// Returns the response of `txn` (its own compares decide `succeeded`), or
/// [`FencedError::Rejected`] when the fence failed.
pub async fn fenced_txn(
    store: &dyn Store,
    term_key: &str,
    term: u64,
    txn: Txn,
) -> Result<TxnResponse, FencedError> {
    let revision = i64::try_from(term).map_err(|_| FencedError::Rejected { term })?;
    let fence = autogate_store::Compare::create_revision(term_key, CompareOp::Equal, revision);
    let extra = txn.failure.len();
    let txn = Txn {
        compares: std::iter::once(fence).chain(txn.compares).collect(),
        success: txn.success,
        // A trailing read of the fence key tells the two reasons for failure apart.
        failure: txn
            .failure
            .into_iter()
            .chain(std::iter::once(TxnOp::get(term_key)))
            .collect(),
    };
    let mut response = store.txn(txn).await?;
    if response.succeeded {
        return Ok(response);
    }
    let fence_holds = match response.responses.get(extra) {
        Some(TxnOpResponse::Get(kvs)) => {
            kvs.first().is_some_and(|kv| kv.create_revision == revision)
        }
        _ => false,
    };
    if !fence_holds {
        return Err(FencedError::Rejected { term });
    }
    response.responses.truncate(extra);
    Ok(response)
}
