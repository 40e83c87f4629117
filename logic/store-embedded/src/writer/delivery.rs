//! Delivery cursors: how far each device has applied its inbox.

use timeline_store::StoreResult;

use super::{WriteCtx, corrupt};
use crate::keys;

impl WriteCtx<'_> {
    pub(crate) fn record_delivery(
        &mut self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> StoreResult<()> {
        let ks = self.ks;
        let key = keys::pair_key(user, device);
        let current = match self.get(&ks.delivery, &key)? {
            Some(raw) => keys::decode_u64(&raw)
                .ok_or_else(|| self.fail_with(corrupt("delivery cursor", "length")))?,
            None => 0,
        };
        if seq > current {
            self.put(&ks.delivery, key, seq.to_be_bytes().to_vec());
        }
        Ok(())
    }
}
