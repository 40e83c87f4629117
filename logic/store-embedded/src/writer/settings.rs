//! A user's settings: small records of their own (push registrations, muted conversations).

use super::WriteCtx;
use crate::keys;

impl WriteCtx<'_> {
    pub(crate) fn put_user_setting(&mut self, user: &str, key: &str, value: Option<Vec<u8>>) {
        let ks = self.ks;
        let record = keys::pair_key(user, key);
        match value {
            Some(value) => self.put(&ks.settings, record, value),
            None => self.delete(&ks.settings, record),
        }
    }
}
