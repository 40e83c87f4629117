"""The Python binding against a real server process: two users chatting both ways, unread
counts, history paging, recall, a group, the server killed and restarted, a slow listener."""

import asyncio
import os

import pytest

import imsdk
from conftest import Recorder, Session


def run(scenario):
    asyncio.run(asyncio.wait_for(scenario, timeout=120))


def texts(messages):
    return [m.text for m in messages]


def to(user):
    return imsdk.Recipient.USER(user_id=user)


def state_names(session):
    """The connection states the session went through, by name (`ONLINE`, `SYNCING`, ...)."""
    return [type(state).__name__.rsplit(".", 1)[-1] for state in session.listener.states()]


def conversation(conversations, conversation_id):
    return next(c for c in conversations if c.conversation_id == conversation_id)


async def sent(session, count):
    """Waits until `count` own messages were acknowledged; returns them."""
    return await session.listener.wait_for(f"{count} acknowledged", lambda events: (
        acked if len(acked := [e.message for e in events if e.is_message_updated()
                               and e.message.state == imsdk.SendState.SENT]) >= count
        else None))


async def receives(session, count):
    return await session.listener.wait_for(
        f"{session.user} receiving {count}",
        lambda _: received if len(received := session.listener.received()) >= count else None)


def test_two_users_chat_both_ways_with_unread_counts_history_and_recall(server, app_dir):
    async def scenario():
        alice = Session(server, "alice", "phone", app_dir)
        bob = Session(server, "bob", "laptop", app_dir)
        await alice.online()
        await bob.online()
        chat = imsdk.direct_conversation_id("alice", "bob")
        assert chat == "d:alice:bob"

        for i in range(3):
            queued = await alice.client.send_text(to("bob"), f"hi bob {i}")
            assert queued.state == imsdk.SendState.SENDING and queued.conversation_id == chat
        assert texts(await receives(bob, 3)) == ["hi bob 0", "hi bob 1", "hi bob 2"]
        await bob.listener.wait_for("bob's unread count 3", lambda events: any(
            e.is_conversation_updated() and e.conversation.unread_count == 3 for e in events))
        assert conversation(await bob.client.conversations(), chat).unread_count == 3

        await bob.client.send_text(to("alice"), "hello alice")
        await bob.client.send_text(to("alice"), "how are you")
        assert texts(await receives(alice, 2)) == ["hello alice", "how are you"]
        await sent(alice, 3)
        assert conversation(await alice.client.conversations(), chat).unread_count == 2

        marker = await bob.client.mark_read(chat, 5)
        assert (marker.read_seq, marker.unread_count) == (5, 0)
        assert conversation(await bob.client.conversations(), chat).unread_count == 0
        await alice.listener.wait_for("bob's read receipt", lambda events: any(
            e.is_read_receipt() and e.reader == "bob" and e.read_seq == 5 for e in events))

        # 20 more, then page the whole conversation from the server, 10 at a time.
        for i in range(20):
            await alice.client.send_text(to("bob"), f"more {i}")
        await receives(bob, 23)
        seqs, anchor = [], 0
        while True:
            page = await bob.client.fetch_history(chat, anchor, imsdk.HistoryDirection.OLDER, 10)
            seqs += [m.seq for m in page.messages]
            if not page.has_more:
                break
            anchor = page.messages[-1].seq
        assert seqs == list(range(25, 0, -1))
        newest = await bob.client.history(chat, 0, 5)
        assert texts(newest) == [f"more {i}" for i in range(19, 14, -1)]

        recall = await alice.client.recall(chat, 1)
        assert (recall.seq, recall.by_user) == (1, "alice")
        await bob.listener.wait_for("the recall", lambda events: any(
            e.is_message_recalled() and e.conversation_id == chat and e.seq == 1
            for e in events))
        [first] = await bob.client.local_history(chat, 2, 1)
        assert first.seq == 1 and first.recalled and first.content == b"" and first.text is None

        with pytest.raises(imsdk.ImError.Server) as refused:
            await bob.client.recall(chat, 2)
        assert refused.value.name == "NOT_SENDER" and refused.value.code == 404
        assert not refused.value.retryable

        await alice.close()
        await bob.close()
        with pytest.raises(imsdk.ImError.Closed):
            await alice.client.send_text(to("bob"), "after shutdown")

    run(scenario())


def test_a_group_is_created_and_posted_to(server, app_dir):
    async def scenario():
        alice, bob, carol = (Session(server, user, "phone", app_dir)
                             for user in ("alice", "bob", "carol"))
        for session in (alice, bob, carol):
            await session.online()

        group = await alice.client.create_group("friends", ["bob", "carol"], False, "req-1")
        assert (group.name, group.owner, group.member_count) == ("friends", "alice", 3)
        again = await alice.client.create_group("friends", ["bob", "carol"], False, "req-1")
        assert again.group_id == group.group_id, "a retried create returns the same group"
        assert not group.broadcast
        channel = await alice.client.create_channel("news", [], True, "")
        assert (channel.broadcast, channel.read_fanout, channel.open) == (True, True, True)
        for session in (bob, carol):
            created = await session.listener.wait_for("the group's creation", lambda events: [
                e.event for e in events if e.is_group_changed()
                and e.event.kind.is_created()])
            assert created[0].group_id == group.group_id
            assert created[0].members == ["alice", "bob", "carol"]

        to_group = imsdk.Recipient.GROUP(group_id=group.group_id)
        # Two senders: carol writes once alice's message has arrived, so the group's order is
        # the one asserted below (sends of two clients are otherwise unordered).
        await alice.client.send_text(to_group, "hello friends")
        await receives(bob, 1)
        await carol.client.send_text(to_group, "hi alice")
        conversation_id = imsdk.group_conversation_id(group.group_id)
        [hello, hi] = await receives(bob, 2)
        assert (hello.sender, hello.text, hello.conversation_id) == (
            "alice", "hello friends", conversation_id)
        assert (hi.sender, hi.text) == ("carol", "hi alice")
        assert texts(await receives(alice, 1)) == ["hi alice"]

        page = await bob.client.group_members(group.group_id, 0, "")
        assert [(m.user_id, m.role) for m in page.members] == [
            ("alice", imsdk.GroupRole.OWNER), ("bob", imsdk.GroupRole.MEMBER),
            ("carol", imsdk.GroupRole.MEMBER)]
        with pytest.raises(imsdk.ImError.Server) as refused:
            await bob.client.remove_group_members(group.group_id, ["carol"])
        assert refused.value.name == "FORBIDDEN"

        for session in (alice, bob, carol):
            await session.close()

    run(scenario())


def test_a_device_registers_its_push_token_and_mutes_a_conversation(server, app_dir):
    async def scenario():
        bob = Session(server, "bob", "phone", app_dir)
        await bob.online()
        await bob.client.register_push_token(
            imsdk.PushService.APNS, "a1b2c3d4e5f6", imsdk.PushPreview.SENDER)
        await bob.client.mute(imsdk.direct_conversation_id("alice", "bob"), True)
        with pytest.raises(imsdk.ImError.Server) as refused:
            await bob.client.register_push_token(
                imsdk.PushService.FCM, "has a space", imsdk.PushPreview.FULL)
        assert refused.value.name == "INVALID_ARGUMENT"
        with pytest.raises(imsdk.ImError.Server) as refused:
            await bob.client.mute(imsdk.direct_conversation_id("alice", "carol"), True)
        assert refused.value.name == "FORBIDDEN"
        await bob.client.unregister_push_token()
        await bob.close()

    run(scenario())


def test_the_server_killed_and_restarted_loses_and_duplicates_nothing(server, app_dir):
    async def scenario():
        alice = Session(server, "alice", "phone", app_dir)
        bob = Session(server, "bob", "laptop", app_dir)
        await alice.online()
        await bob.online()
        for i in range(5):
            await alice.client.send_text(to("bob"), f"before {i}")
        await sent(alice, 5)
        await receives(bob, 5)

        server.kill()
        for session in (alice, bob):
            await session.listener.wait_for(f"{session.user} noticing the server gone", lambda _: (
                (states := session.listener.states())[-1].is_waiting_to_reconnect()
                or states[-1].is_connecting()))
        # Written while the server is down: they wait in the outbox (and its database).
        for i in range(5):
            queued = await alice.client.send_text(to("bob"), f"during {i}")
            assert queued.state == imsdk.SendState.SENDING

        server.start()
        for session in (alice, bob):
            await session.listener.wait_for(f"{session.user} online again", lambda _: sum(
                1 for s in session.listener.states() if s.is_online()) >= 2)
        acked = await sent(alice, 10)
        assert sorted(m.seq for m in acked) == list(range(1, 11))
        received = await receives(bob, 10)
        await asyncio.sleep(1)  # anything duplicated would arrive now
        received = bob.listener.received()
        assert texts(received) == [f"before {i}" for i in range(5)] + [
            f"during {i}" for i in range(5)]
        assert [m.seq for m in received] == list(range(1, 11))

        states = state_names(bob)
        assert states[-1] == "ONLINE" and "SYNCING" in states[states.index("ONLINE") + 1:]

        await alice.close()
        await bob.close()

    run(scenario())


def test_a_slow_listener_holds_the_server_back_without_losing_or_disconnecting(server, app_dir):
    """600 messages to a listener that takes 10 ms per event (about 12 s for all): the client
    reads from the server only as fast as the listener takes events, keeps its heartbeats going
    (no reconnect), and loses nothing."""
    async def scenario():
        capacity = 8
        bob = Session(server, "bob", "laptop", app_dir, listener=Recorder(delay=0.01),
                      event_capacity=capacity)
        alice = Session(server, "alice", "phone", app_dir)
        await bob.online()
        await alice.online()
        total = 600
        for i in range(total):
            await alice.client.send_text(to("bob"), f"m{i}")
        await sent(alice, total)

        # How far the client has read ahead of what the listener took: bounded by the event
        # queue and the frames read before it filled (a sync page is at most 200 entries).
        largest_lead = 0
        while len(bob.listener.received()) < total:
            status = await bob.client.status()
            largest_lead = max(largest_lead, status.inbox_cursor - len(bob.listener.received()))
            assert status.state.is_online(), f"bob's connection dropped: {status.state}"
            await asyncio.sleep(0.1)
        assert largest_lead <= capacity + 200 + 10, f"read {largest_lead} ahead of the listener"

        received = bob.listener.received()
        assert texts(received) == [f"m{i}" for i in range(total)]
        states = state_names(bob)
        assert "WAITING_TO_RECONNECT" not in states, states

        await alice.close()
        await bob.close()

    run(scenario())


def test_bad_arguments_are_typed_exceptions(app_dir):
    with pytest.raises(imsdk.ImError.InvalidArgument) as bad:
        imsdk.ImClient(imsdk.ClientOptions(
            server="no port here", token="t", user_id="alice", device_id="phone",
            data_dir=app_dir))
    assert "server" in str(bad.value)
    with pytest.raises(imsdk.ImError.InvalidArgument):
        imsdk.ImClient(imsdk.ClientOptions(
            server="127.0.0.1:1", token="t", user_id="alice", device_id="phone",
            data_dir=app_dir, transport=imsdk.Transport.TLS(), ca_cert_pem="not a PEM"))
    assert os.path.isdir(app_dir)
