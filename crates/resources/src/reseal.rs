//! Sealing again, bound to their names, the secret values earlier versions sealed unbound
//! (`v1`, see [`crate::crypto`]). An unbound value opens under any name, so whoever can write
//! the store could copy it under another secret's name; once every value is `v2`, such a copy
//! fails to open. The active node does it when it takes the role, in fenced transactions of at
//! most [`BATCH`] secrets (etcd refuses transactions of more than 128 operations by default),
//! each landing only if no resource changed since it read them. A secret is sealed again whole
//! or not at all, so the batches need no atomicity between them.

use crate::crypto::{is_unbound, KeyFile};
use crate::model::Secret;
use crate::store::{Plan, ResourceError, Resources};
use autogate_store::{Compare, TxnOp};

/// Secrets sealed again per transaction.
const BATCH: usize = 50;

impl Resources {
    /// Seals every unbound secret value again, bound to its secret's name; returns the names
    /// of the secrets it sealed again (none when there was nothing to do). A value that does not
    /// open with `key` is left as it is (it is reported by the checks that open it).
    pub async fn reseal_unbound_secrets(
        &self,
        key: &KeyFile,
    ) -> Result<Vec<String>, ResourceError> {
        self.reseal_in_batches(key, BATCH).await
    }

    async fn reseal_in_batches(
        &self,
        key: &KeyFile,
        batch: usize,
    ) -> Result<Vec<String>, ResourceError> {
        let mut all = Vec::new();
        loop {
            let done = self.reseal_batch(key, batch).await?;
            if done.is_empty() {
                return Ok(all);
            }
            all.extend(done);
        }
    }

    /// Seals at most `batch` unbound values again in one transaction; their names.
    async fn reseal_batch(
        &self,
        key: &KeyFile,
        batch: usize,
    ) -> Result<Vec<String>, ResourceError> {
        self.write(|snap| {
            let mut names = Vec::new();
            let mut ops = Vec::new();
            for secret in snap.all::<Secret>()? {
                if names.len() == batch {
                    break;
                }
                if !is_unbound(&secret.value) {
                    continue;
                }
                let Ok(plain) = key.open(&secret.meta.name, &secret.value) else {
                    continue;
                };
                let mut next = secret.clone();
                next.value = key.seal(&secret.meta.name, &plain)?;
                ops.push(TxnOp::put(
                    self.key(crate::model::Kind::Secret, &secret.meta.name),
                    Self::encode(&next)?,
                ));
                names.push(secret.meta.name);
            }
            if ops.is_empty() {
                return Ok((None, names));
            }
            let compares = names
                .iter()
                .map(|n| Compare::exists(self.key(crate::model::Kind::Secret, n)))
                .collect();
            Ok((Some(Plan { compares, ops }), names))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unbound_values_are_sealed_again_bound_to_their_names() {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let r = Resources::new(store, "c1");
        let key = KeyFile::from_bytes("key").unwrap();
        let mut old = Secret::new("prod-db", "the-prod-password", &key).unwrap();
        old.value = crate::crypto::seal_unbound(&key, b"the-prod-password");
        r.create(old).await.unwrap();
        r.create(Secret::new("lab-db", "lab", &key).unwrap())
            .await
            .unwrap();

        assert_eq!(
            r.reseal_unbound_secrets(&key).await.unwrap(),
            vec!["prod-db"]
        );
        let now: Secret = r.get("prod-db").await.unwrap().unwrap();
        assert!(!is_unbound(&now.value));
        assert_eq!(
            &*key.open_text("prod-db", &now.value).unwrap(),
            "the-prod-password"
        );
        // Copied under another name, it no longer opens.
        assert!(key.open("lab-db", &now.value).is_err());
        assert!(r.reseal_unbound_secrets(&key).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn more_unbound_values_than_one_batch_are_all_sealed_again() {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let r = Resources::new(store, "c1");
        let key = KeyFile::from_bytes("key").unwrap();
        for i in 0..5 {
            let mut old = Secret::new(format!("s{i}"), "x", &key).unwrap();
            old.value = crate::crypto::seal_unbound(&key, b"x");
            r.create(old).await.unwrap();
        }
        // One that does not open with this key is left as it is, and ends the loop.
        let mut foreign = Secret::new("foreign", "x", &key).unwrap();
        foreign.value = crate::crypto::seal_unbound(&KeyFile::from_bytes("other").unwrap(), b"x");
        r.create(foreign).await.unwrap();

        let mut done = r.reseal_in_batches(&key, 2).await.unwrap();
        done.sort();
        assert_eq!(done, ["s0", "s1", "s2", "s3", "s4"]);
        for s in r.list::<Secret>().await.unwrap() {
            assert_eq!(
                is_unbound(&s.value),
                s.meta.name == "foreign",
                "{}",
                s.meta.name
            );
        }
    }
}
