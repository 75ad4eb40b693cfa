//! Behaviour of the peer wire codec.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn encode(messages: &[Message]) -> Bytes {
    let mut out = Vec::new();
    encode_batch(messages, &mut out);
    assert_eq!(out.len(), encoded_len(messages));
    Bytes::from(out)
}

fn append_entries(prev_log_index: u64, payloads: &[&'static [u8]]) -> Message {
    let entries = payloads
        .iter()
        .enumerate()
        .map(|(offset, payload)| Entry {
            term: 2,
            index: prev_log_index + 1 + offset as u64,
            kind: EntryKind::Normal,
            data: Bytes::from_static(payload),
        })
        .collect();
    Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::AppendEntries { prev_log_index, prev_log_term: 1, entries, leader_commit: 3 },
    }
}

#[test]
fn empty_batch_is_five_bytes() {
    let encoded = encode(&[]);
    assert_eq!(&encoded[..], &[WIRE_FORMAT_VERSION, 0, 0, 0, 0]);
    assert_eq!(decode_batch(encoded), Ok(vec![]));
}

#[test]
fn fixed_message_sizes_match_docs() {
    let sized = |body: MessageBody, expected: usize| {
        assert_eq!(encoded_len(&[Message { from: 1, to: 2, term: 3, body }]) - 5, expected);
    };
    let vote =
        MessageBody::RequestVote { pre_vote: true, last_log_index: 1, last_log_term: 1, transfer: false };
    sized(vote, 42);
    sized(MessageBody::RequestVoteResponse { pre_vote: false, granted: true }, 26);
    sized(append_entries(0, &[]).body, 53);
    sized(append_entries(0, &[b"abc"]).body, 53 + 21 + 3);
    let response =
        MessageBody::AppendEntriesResponse { success: true, index: 1, conflict_term: 0, conflict_index: 0 };
    sized(response, 50);
    sized(MessageBody::Heartbeat { commit: 1, context: 2 }, 41);
    sized(MessageBody::HeartbeatResponse { context: 2 }, 33);
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 1, term: 1, conf: ConfState::with_voters(vec![1, 2, 3]) },
        data: Bytes::from_static(b"data"),
    };
    sized(MessageBody::InstallSnapshot { snapshot: snapshot.clone() }, 57 + 24 + 4);
    let mut with_learners = snapshot;
    with_learners.meta.conf.learners = vec![4, 5];
    sized(MessageBody::InstallSnapshot { snapshot: with_learners }, 61 + 24 + 16 + 4);
    sized(MessageBody::TimeoutNow, 25);
    sized(MessageBody::ReadIndex { context: 1 }, 33);
    sized(MessageBody::ReadIndexResponse { context: 1, index: 2 }, 41);
}

#[test]
fn decoded_payloads_share_the_input_buffer() {
    let encoded = encode(&[append_entries(4, &[b"hello", b"world"])]);
    let decoded = decode_batch(encoded.clone()).unwrap();
    let MessageBody::AppendEntries { entries, .. } = &decoded[0].body else { panic!("wrong kind") };
    let input = encoded.as_ptr_range();
    assert!(input.contains(&entries[0].data.as_ptr()), "payload was copied");
    assert_eq!(&entries[1].data[..], b"world");
}

#[test]
fn heartbeat_layout_matches_docs() {
    let message = Message { from: 1, to: 2, term: 3, body: MessageBody::Heartbeat { commit: 4, context: 5 } };
    let encoded = encode(&[message]);
    let mut expected = vec![1, 1, 0, 0, 0];
    for field in [1u64, 2, 3] {
        expected.extend_from_slice(&field.to_le_bytes());
    }
    expected.push(4); // tag
    expected.extend_from_slice(&4u64.to_le_bytes());
    expected.extend_from_slice(&5u64.to_le_bytes());
    assert_eq!(&encoded[..], &expected[..]);
}

fn install_snapshot(data: &'static [u8]) -> Message {
    let meta = SnapshotMeta { index: 7, term: 3, conf: ConfState::with_voters(vec![1, 2, 3]) };
    let snapshot = Snapshot { meta, data: Bytes::from_static(data) };
    Message { from: 1, to: 2, term: 3, body: MessageBody::InstallSnapshot { snapshot } }
}

/// Where the snapshot of `install_snapshot`'s message starts, its checksum and its data.
const SNAPSHOT_START: usize = 5 + 25;
const SNAPSHOT_CHECKSUM_OFFSET: usize = SNAPSHOT_START + 8 + 8 + 4 + 3 * 8 + 8;
const SNAPSHOT_DATA_OFFSET: usize = SNAPSHOT_CHECKSUM_OFFSET + 4;

#[test]
fn install_snapshot_layout_matches_docs() {
    let encoded = encode(&[install_snapshot(b"state")]);
    assert_eq!(encoded[29], 10, "kind tag");
    let mut expected = Vec::new();
    for field in [7u64, 3] {
        expected.extend_from_slice(&field.to_le_bytes());
    }
    expected.extend_from_slice(&3u32.to_le_bytes());
    for voter in [1u64, 2, 3] {
        expected.extend_from_slice(&voter.to_le_bytes());
    }
    expected.extend_from_slice(&5u64.to_le_bytes());
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&expected), b"state");
    expected.extend_from_slice(&checksum.to_le_bytes());
    expected.extend_from_slice(b"state");
    assert_eq!(&encoded[SNAPSHOT_START..], &expected[..]);
    assert_eq!(&encoded[SNAPSHOT_DATA_OFFSET..], b"state");
}

fn install_snapshot_with_learners(learners: Vec<u64>) -> Message {
    let mut message = install_snapshot(b"state");
    let MessageBody::InstallSnapshot { snapshot } = &mut message.body else { unreachable!() };
    snapshot.meta.conf.learners = learners;
    message
}

/// A configuration with learners travels as tag 11, learners after the voters, under
/// the checksum; one without learners stays tag 10, which builds before learners read.
#[test]
fn install_snapshot_with_learners_layout_matches_docs() {
    let message = install_snapshot_with_learners(vec![4, 9]);
    let encoded = encode(std::slice::from_ref(&message));
    assert_eq!(encoded[29], 11, "kind tag");
    let mut expected = Vec::new();
    for field in [7u64, 3] {
        expected.extend_from_slice(&field.to_le_bytes());
    }
    expected.extend_from_slice(&3u32.to_le_bytes());
    for voter in [1u64, 2, 3] {
        expected.extend_from_slice(&voter.to_le_bytes());
    }
    expected.extend_from_slice(&2u32.to_le_bytes());
    for learner in [4u64, 9] {
        expected.extend_from_slice(&learner.to_le_bytes());
    }
    expected.extend_from_slice(&5u64.to_le_bytes());
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&expected), b"state");
    expected.extend_from_slice(&checksum.to_le_bytes());
    expected.extend_from_slice(b"state");
    assert_eq!(&encoded[SNAPSHOT_START..], &expected[..]);
    assert_eq!(decode_batch(encoded), Ok(vec![message]));
    assert_eq!(encode(&[install_snapshot(b"state")])[29], 10);
}

/// A tag-11 learner list must be non-empty, strictly increasing, and hold no voter.
#[test]
fn bad_learner_lists_are_refused() {
    for (learners, reason) in [
        (vec![5, 4], "learners not strictly increasing"),
        (vec![3, 4], "a learner is also a voter"),
        (vec![], "tag 11 snapshot without learners"),
    ] {
        // Built by hand, with a correct checksum, so that only the rule is broken.
        let encoded = encode(&[install_snapshot_with_learners(vec![4])]);
        let count_at = SNAPSHOT_START + 8 + 8 + 4 + 3 * 8;
        let mut forged = encoded[..count_at].to_vec();
        forged.extend_from_slice(&(learners.len() as u32).to_le_bytes());
        for learner in &learners {
            forged.extend_from_slice(&u64::to_le_bytes(*learner));
        }
        forged.extend_from_slice(&5u64.to_le_bytes());
        let checksum = crc32c::crc32c_append(crc32c::crc32c(&forged[SNAPSHOT_START..]), b"state");
        forged.extend_from_slice(&checksum.to_le_bytes());
        forged.extend_from_slice(b"state");
        match decode_batch(Bytes::from(forged)) {
            Err(CodecError::Invalid { reason: found, .. }) => assert_eq!(found, reason),
            other => panic!("{learners:?}: expected Invalid({reason}), got {other:?}"),
        }
    }
}

/// A damaged snapshot never reaches the Raft core (and so never the disk): any flipped
/// byte of its data, index or term is refused, naming where the snapshot lies.
#[test]
fn a_flipped_byte_in_a_snapshot_is_refused_with_its_offset() {
    let message = install_snapshot(b"the leader's state machine");
    let encoded = encode(std::slice::from_ref(&message)).to_vec();
    assert_eq!(decode_batch(Bytes::from(encoded.clone())), Ok(vec![message]));
    let meta_fields = SNAPSHOT_START..SNAPSHOT_START + 16;
    let data = SNAPSHOT_DATA_OFFSET..encoded.len();
    for position in meta_fields.chain(data) {
        let mut damaged = encoded.clone();
        damaged[position] ^= 0x20;
        match decode_batch(Bytes::from(damaged)) {
            Err(CodecError::SnapshotChecksumMismatch {
                offset,
                end,
                checksum_offset,
                expected,
                computed,
            }) => {
                assert!(offset <= position && position < end, "byte {position} outside {offset}..{end}");
                assert_eq!((offset, end), (SNAPSHOT_START, encoded.len()));
                assert_eq!(checksum_offset, SNAPSHOT_CHECKSUM_OFFSET);
                assert_ne!(expected, computed);
            }
            other => panic!("flip at byte {position} gave {other:?}"),
        }
    }
    let mut damaged = encoded.clone();
    damaged[SNAPSHOT_CHECKSUM_OFFSET] ^= 1;
    let error = decode_batch(Bytes::from(damaged)).unwrap_err();
    assert!(matches!(error, CodecError::SnapshotChecksumMismatch { .. }), "{error}");
    assert!(error.to_string().contains(&format!("bytes {SNAPSHOT_START}..")), "{error}");
}

/// A peer of an earlier version sends snapshots without a checksum (tag 6): they still
/// decode, for a rolling upgrade.
#[test]
fn an_unchecked_snapshot_from_an_earlier_version_still_decodes() {
    let message = install_snapshot(b"old peer");
    let mut legacy = encode(std::slice::from_ref(&message)).to_vec();
    legacy[29] = 6;
    legacy.drain(SNAPSHOT_CHECKSUM_OFFSET..SNAPSHOT_DATA_OFFSET);
    assert_eq!(decode_batch(Bytes::from(legacy)), Ok(vec![message]));
}

/// A peer that runs v0.1.0 reads only tag 6 (it refuses the whole batch with "unknown
/// message kind 10"): `Unchecked` sends it that layout, which this version decodes back.
/// A configuration with learners still goes as tag 11: tag 6 would drop them.
#[test]
fn a_snapshot_for_an_earlier_version_is_sent_unchecked_in_its_layout() {
    let message = install_snapshot(b"old peer");
    let mut legacy = encode(std::slice::from_ref(&message)).to_vec();
    legacy[29] = 6;
    legacy.drain(SNAPSHOT_CHECKSUM_OFFSET..SNAPSHOT_DATA_OFFSET);
    let batch = [message.clone(), Message { from: 1, to: 2, term: 3, body: MessageBody::TimeoutNow }];
    let mut unchecked = Vec::new();
    encode_batch_with(&batch[..1], SnapshotEncoding::Unchecked, &mut unchecked);
    assert_eq!(unchecked, legacy);
    let mut both = Vec::new();
    encode_batch_with(&batch, SnapshotEncoding::Unchecked, &mut both);
    assert_eq!(both.len(), encoded_len_with(&batch, SnapshotEncoding::Unchecked));
    assert_eq!(decode_batch(Bytes::from(both)), Ok(batch.to_vec()));

    let with_learners = install_snapshot_with_learners(vec![9]);
    let mut out = Vec::new();
    encode_batch_with(std::slice::from_ref(&with_learners), SnapshotEncoding::Unchecked, &mut out);
    assert_eq!(out[29], 11, "kind tag");
    assert_eq!(
        out.len(),
        encoded_len_with(std::slice::from_ref(&with_learners), SnapshotEncoding::Unchecked)
    );
    assert_eq!(decode_batch(Bytes::from(out)), Ok(vec![with_learners]));
}

#[test]
fn unknown_version_and_message_tag_are_rejected_with_offsets() {
    let mut encoded = encode(&[Message { from: 1, to: 2, term: 1, body: MessageBody::TimeoutNow }]).to_vec();
    encoded[0] = 9;
    assert_eq!(
        decode_batch(Bytes::from(encoded.clone())),
        Err(CodecError::UnsupportedVersion { offset: 0, version: 9 })
    );
    encoded[0] = WIRE_FORMAT_VERSION;
    encoded[29] = 200;
    assert_eq!(
        decode_batch(Bytes::from(encoded)),
        Err(CodecError::UnknownTag { offset: 29, what: "message kind", tag: 200 })
    );
}

#[test]
fn unknown_entry_kind_and_flags_are_rejected() {
    let mut encoded = encode(&[append_entries(0, &[b""])]).to_vec();
    let kind_offset = 5 + 25 + 8 + 8 + 8 + 4 + 16;
    encoded[kind_offset] = 3;
    assert_eq!(
        decode_batch(Bytes::from(encoded)),
        Err(CodecError::UnknownTag { offset: kind_offset, what: "entry kind", tag: 3 })
    );
    let vote = Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::RequestVoteResponse { pre_vote: false, granted: true },
    };
    let mut encoded = encode(&[vote]).to_vec();
    encoded[30] |= 0x80;
    assert_eq!(
        decode_batch(Bytes::from(encoded)),
        Err(CodecError::UnknownTag { offset: 30, what: "flags", tag: 0x82 })
    );
}

#[test]
fn non_consecutive_entries_are_rejected() {
    let mut message = append_entries(5, &[b"a", b"b"]);
    if let MessageBody::AppendEntries { entries, .. } = &mut message.body {
        entries[1].index = 9;
    }
    let error = decode_batch(encode(&[message])).unwrap_err();
    assert!(
        matches!(error, CodecError::Invalid { reason, .. } if reason.starts_with("entry index")),
        "{error}"
    );
}

#[test]
fn node_id_zero_is_rejected() {
    let message = Message { from: 0, to: 2, term: 1, body: MessageBody::TimeoutNow };
    assert_eq!(decode_batch(encode(&[message])), Err(CodecError::Invalid { offset: 5, reason: "node id 0" }));
}

#[test]
fn message_count_beyond_the_limit_is_rejected_before_allocating() {
    let mut encoded = vec![WIRE_FORMAT_VERSION];
    encoded.extend_from_slice(&(MAX_MESSAGES_PER_BATCH + 1).to_le_bytes());
    assert_eq!(
        decode_batch(Bytes::from(encoded)),
        Err(CodecError::LimitExceeded {
            offset: 1,
            what: "message",
            count: MAX_MESSAGES_PER_BATCH as u64 + 1,
            limit: MAX_MESSAGES_PER_BATCH as u64,
        })
    );
    let mut encoded = vec![WIRE_FORMAT_VERSION];
    encoded.extend_from_slice(&1000u32.to_le_bytes());
    assert_eq!(
        decode_batch(Bytes::from(encoded)),
        Err(CodecError::CountTooLarge { offset: 1, count: 1000, available: 0 })
    );
}

#[test]
fn entries_beyond_the_batch_limit_are_rejected() {
    // Two valid messages whose entry counts each fit the limit but whose sum does not.
    let per_message = MAX_ENTRIES_PER_BATCH as u32 / 2 + 1;
    let mut encoded = vec![WIRE_FORMAT_VERSION];
    encoded.extend_from_slice(&2u32.to_le_bytes());
    let mut previous_index = 0u64;
    for _ in 0..2 {
        for field in [1u64, 2, 1] {
            encoded.extend_from_slice(&field.to_le_bytes());
        }
        encoded.push(2);
        for field in [previous_index, 1, 0] {
            encoded.extend_from_slice(&field.to_le_bytes());
        }
        encoded.extend_from_slice(&per_message.to_le_bytes());
        for _ in 0..per_message {
            previous_index += 1;
            encoded.extend_from_slice(&1u64.to_le_bytes());
            encoded.extend_from_slice(&previous_index.to_le_bytes());
            encoded.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
    }
    let error = decode_batch(Bytes::from(encoded)).unwrap_err();
    assert!(matches!(error, CodecError::LimitExceeded { what: "batch entry", .. }), "{error}");
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut encoded = encode(&[]).to_vec();
    encoded.push(0);
    assert_eq!(decode_batch(Bytes::from(encoded)), Err(CodecError::TrailingBytes { offset: 5, count: 1 }));
}

fn arb_node_id() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..8, 1u64..=u64::MAX]
}

fn arb_entries() -> impl Strategy<Value = (u64, Vec<Entry>)> {
    let entry_fields = (1u64..=u64::MAX, 0u8..3, prop::collection::vec(any::<u8>(), 0..16));
    (0u64..1_000_000, prop::collection::vec(entry_fields, 0..6)).prop_map(|(prev_log_index, fields)| {
        let entries = fields
            .into_iter()
            .enumerate()
            .map(|(offset, (term, kind, data))| Entry {
                term,
                index: prev_log_index + 1 + offset as u64,
                kind: EntryKind::from_tag(kind).unwrap(),
                data: Bytes::from(data),
            })
            .collect();
        (prev_log_index, entries)
    })
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::btree_set(1u64..=u64::MAX, 0..6),
        prop::collection::btree_set(1u64..=u64::MAX, 0..4),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(index, term, voters, learners, data)| {
            let learners = learners.difference(&voters).copied().collect();
            let conf = ConfState { voters: voters.into_iter().collect(), learners };
            Snapshot { meta: SnapshotMeta { index, term, conf }, data: Bytes::from(data) }
        })
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(pre_vote, last_log_index, last_log_term, transfer)| MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                transfer
            }
        ),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        (arb_entries(), any::<u64>(), any::<u64>()).prop_map(
            |((prev_log_index, entries), prev_log_term, leader_commit)| MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit
            }
        ),
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(success, index, conflict_term, conflict_index)| MessageBody::AppendEntriesResponse {
                success,
                index,
                conflict_term,
                conflict_index
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(commit, context)| MessageBody::Heartbeat { commit, context }),
        any::<u64>().prop_map(|context| MessageBody::HeartbeatResponse { context }),
        arb_snapshot().prop_map(|snapshot| MessageBody::InstallSnapshot { snapshot }),
        Just(MessageBody::TimeoutNow),
        any::<u64>().prop_map(|context| MessageBody::ReadIndex { context }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(context, index)| MessageBody::ReadIndexResponse { context, index }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (arb_node_id(), arb_node_id(), any::<u64>(), arb_body()).prop_map(|(from, to, term, body)| Message {
        from,
        to,
        term,
        body,
    })
}

proptest! {
    #[test]
    fn every_message_kind_round_trips(messages in prop::collection::vec(arb_message(), 0..6)) {
        prop_assert_eq!(decode_batch(encode(&messages)).unwrap(), messages);
    }

    #[test]
    fn every_message_kind_round_trips_encoded_for_an_earlier_version(
        messages in prop::collection::vec(arb_message(), 0..6),
    ) {
        let mut out = Vec::new();
        encode_batch_with(&messages, SnapshotEncoding::Unchecked, &mut out);
        prop_assert_eq!(out.len(), encoded_len_with(&messages, SnapshotEncoding::Unchecked));
        prop_assert_eq!(decode_batch(Bytes::from(out)).unwrap(), messages);
    }

    #[test]
    fn every_truncation_of_a_valid_batch_is_an_error(messages in prop::collection::vec(arb_message(), 1..4)) {
        let encoded = encode(&messages);
        for len in 0..encoded.len() {
            prop_assert!(decode_batch(encoded.slice(..len)).is_err(), "prefix of {} bytes decoded", len);
        }
    }

    #[test]
    fn corrupting_one_byte_never_panics(
        messages in prop::collection::vec(arb_message(), 1..4),
        position in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let mut encoded = encode(&messages).to_vec();
        let position = position % encoded.len();
        encoded[position] = byte;
        let _ = decode_batch(Bytes::from(encoded));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_batch(Bytes::from(bytes.clone()));
        let mut headed = vec![WIRE_FORMAT_VERSION, 1, 0, 0, 0];
        headed.extend_from_slice(&bytes);
        let _ = decode_batch(Bytes::from(headed));
    }
}
