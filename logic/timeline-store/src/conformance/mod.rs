//! The conformance suite: the behaviour every [`TimelineStore`] backend must show, written
//! once against the trait so that the embedded store and the distributed one are held to the
//! same contract.
//!
//! A backend provides a [`StoreFactory`] and either calls [`run_all`] or, better, calls each
//! check from its own `#[tokio::test]` so that a failure names the behaviour that broke:
//!
//! ```ignore
//! #[tokio::test]
//! async fn resend_returns_the_original_as_a_duplicate_and_writes_nothing() {
//!     conformance::resend_returns_the_original_as_a_duplicate_and_writes_nothing(&mut MyFactory::new()).await;
//! }
//! ```
//!
//! Every check opens its own fresh store, uses only the trait, passes explicit clocks (no
//! sleeps) and panics with a message that says what was expected.

//! The checks live in one file per family (sends, read markers, recall and delete, inboxes,
//! history and the conversation list, groups, restarts, refused arguments), with the helpers they share in
//! `helpers`; [`for_each_check!`](crate::for_each_check) lists them all.
//!
//! The suite is built only with the crate's `conformance` feature: backends enable it in their
//! `[dev-dependencies]`, so production builds carry neither the suite nor what it needs (tokio
//! for its concurrent check, futures to catch a failing check in [`run_all`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

use crate::{InboxRetention, TimelineStore};

mod arguments;
mod groups;
mod helpers;
mod history_and_lists;
mod inbox;
mod read_fanout;
mod read_markers;
mod recall_delete;
mod restart;
mod sends;

pub use arguments::*;
pub use groups::*;
pub use history_and_lists::*;
pub use inbox::*;
pub use read_fanout::*;
pub use read_markers::*;
pub use recall_delete::*;
pub use restart::*;
pub use sends::*;

/// Opens stores for the suite.
pub trait StoreFactory {
    /// The backend under test.
    type Store: TimelineStore;

    /// A store with no data in it.
    fn open_fresh(&mut self) -> impl Future<Output = Self::Store> + Send;

    /// A store with no data in it that enforces `retention`; [`StoreFactory::reopen`] keeps it.
    fn open_with_retention(
        &mut self,
        retention: InboxRetention,
    ) -> impl Future<Output = Self::Store> + Send;

    /// Closes (drops) `store` and opens the same data again, as a process restart would.
    fn reopen(&mut self, store: Self::Store) -> impl Future<Output = Self::Store> + Send;
}

/// A fixed clock for the checks: Unix ms in late 2023.
const T0: u64 = 1_700_000_000_000;

/// Generous limit for "read everything" pages.
const ALL: u32 = 10_000;

/// Runs every check, each on fresh stores from `factory`, panicking with the name of the
/// first check that fails.
pub async fn run_all<F: StoreFactory>(factory: &mut F) {
    macro_rules! checks {
        ($($check:ident),* $(,)?) => {$(
            if let Err(panic) = AssertUnwindSafe($check(&mut *factory)).catch_unwind().await {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("conformance check `{}` failed: {reason}", stringify!($check));
            }
        )*};
    }
    crate::for_each_check!(checks);
}

/// Calls macro `$m` with the name of every conformance check, so a backend's test file can turn
/// each into its own test without repeating (or missing) the list:
///
/// ```ignore
/// macro_rules! conformance_tests {
///     ($($check:ident),* $(,)?) => {$(
///         #[tokio::test]
///         async fn $check() { timeline_store::conformance::$check(&mut MyFactory::new()).await; }
///     )*};
/// }
/// timeline_store::for_each_check!(conformance_tests);
/// ```
#[macro_export]
macro_rules! for_each_check {
    ($m:ident) => {
        $m!(
            inbox_seqs_are_contiguous_under_concurrent_commits,
            server_msg_ids_are_unique,
            messages_of_one_call_are_stored_in_order,
            resend_returns_the_original_as_a_duplicate_and_writes_nothing,
            reusing_a_client_msg_id_for_another_message_conflicts,
            unread_counts_rise_for_recipients_but_not_the_sender,
            mark_read_recomputes_unread_and_only_moves_forward,
            mark_read_syncs_the_marker_and_sends_a_receipt,
            recall_refuses_unknown_messages_other_senders_and_expired_windows,
            recall_erases_the_content_and_tells_every_recipient_once,
            delete_hides_messages_for_the_deleter_only,
            inbox_retention_by_count_keeps_the_newest_entries,
            inbox_retention_by_age_trims_old_entries_on_a_sweep,
            history_pages_older_and_newer_around_anchors,
            read_inbox_honours_from_to_and_limit,
            conversations_are_listed_newest_first_with_cursor_paging,
            group_creation_puts_the_owner_first_and_is_idempotent,
            adding_and_removing_members_checks_permissions_and_limits,
            joining_and_leaving_follow_openness_and_hand_over_ownership,
            group_members_page_in_user_id_order,
            delivery_cursor_keeps_the_maximum,
            user_settings_are_listed_by_prefix_and_survive_a_restart,
            groups_left_or_removed_from_leave_the_conversation_list,
            the_inbox_epoch_is_kept_across_restarts_and_differs_per_store,
            everything_survives_a_restart_and_numbering_continues,
            far_too_long_ids_and_cursors_are_refused_as_invalid_arguments,
            malformed_ids_and_cursors_are_refused_as_invalid_arguments,
            a_resend_after_a_recall_is_still_a_duplicate_or_a_conflict,
            recalled_and_deleted_messages_count_as_unread_until_read,
            conversations_updated_in_the_same_millisecond_page_in_id_order,
            a_member_who_rejoins_ranks_newest_and_starts_with_nothing_unread,
            read_fanout_stores_a_message_once_and_switches_without_gaps,
            read_fanout_membership_events_reach_only_the_changed_users,
            a_broadcast_channel_keeps_its_flag_through_changes_and_restarts,
        );
    };
}
