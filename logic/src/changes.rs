//! Changes to messages already sent: read markers, recall and delete for me (SPEC §13.4,
//! §13.6, §13.7).

use im_protocol::{Body, pb};
use timeline_store::TimelineStore;

use crate::errors::{error, store_error};
use crate::validate::MAX_DELETE_SEQS;
use crate::{Caller, Effects, Logic, Reply};

impl<S: TimelineStore> Logic<S> {
    /// Runs a read-marker, recall or delete request.
    pub(crate) async fn change_request(
        &self,
        caller: &Caller,
        body: Body,
        now: u64,
        effects: &mut Effects,
    ) -> Reply {
        match body {
            Body::ReadMarkerReq(request) => {
                let conversation = self.authorize(caller, &request.conversation_id).await?;
                let receipt_to = conversation
                    .peer_of(&caller.user)
                    .filter(|peer| *peer != caller.user);
                let (state, deliveries) = self
                    .store
                    .mark_read(
                        &caller.user,
                        &request.conversation_id,
                        request.read_seq,
                        receipt_to,
                        now,
                    )
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(deliveries);
                Ok(Some(Body::ReadMarkerResp(pb::ReadMarkerResp {
                    conversation_id: state.conversation_id,
                    read_seq: state.read_seq,
                    unread_count: state.unread_count,
                })))
            }
            Body::RecallReq(request) => {
                let conversation = self.authorize(caller, &request.conversation_id).await?;
                let recipients = self.participants(&conversation).await?;
                let (event, deliveries) = self
                    .store
                    .recall(
                        &request.conversation_id,
                        request.conversation_seq,
                        &caller.user,
                        &recipients,
                        self.config.recall_window_ms,
                        now,
                    )
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(deliveries);
                Ok(Some(Body::RecallResp(pb::RecallResp {
                    event: Some(event),
                })))
            }
            Body::DeleteReq(request) => {
                if request.conversation_seqs.len() > MAX_DELETE_SEQS {
                    return Err(error(
                        pb::ErrorCode::InvalidArgument,
                        format!("a delete lists at most {MAX_DELETE_SEQS} conversation_seqs"),
                    ));
                }
                self.authorize(caller, &request.conversation_id).await?;
                let (deleted, deliveries) = self
                    .store
                    .delete_messages(
                        &caller.user,
                        &request.conversation_id,
                        &request.conversation_seqs,
                        now,
                    )
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(deliveries);
                Ok(Some(Body::DeleteResp(pb::DeleteResp { deleted })))
            }
            other => Err(error(
                pb::ErrorCode::WrongDirection,
                format!("{:?} is not a change request", other.op()),
            )),
        }
    }
}
