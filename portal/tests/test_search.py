"""Conversation search: PostgreSQL full text over the user's own messages and the answers they
were shown, never another user's; each hit linked to its run, its words highlighted in a
snippet that is safe HTML whatever the text holds."""

import pytest

from agents.models import Conversation, Run
from agents.selectors import START, STOP, SearchRefused, conversations_search, marked

pytestmark = pytest.mark.django_db


def said(user, agent, asked, answer="", *, state="succeeded", conversation=None, title="Chat"):
    conversation = conversation or Conversation.objects.create(owner=user, agent=agent, title=title)
    return Run.objects.create(
        agent=agent, conversation=conversation, actor=user, input=asked, answer=answer, state=state
    )


def test_ones_own_question_and_answer_are_found_and_linked_to_the_run(client, people, help_desk):
    run = said(
        people.member,
        help_desk,
        "How do I reset my VPN token?",
        "Open the self-service portal and choose Reset token.",
        title="VPN trouble",
    )
    said(people.member, help_desk, "Where is the canteen?", "On the ground floor.")
    client.force_login(people.member)

    response = client.get("/chat/search/", {"q": "vpn"})

    page = response.content.decode()
    assert response.status_code == 200
    assert "1 message found" in page
    assert f'<a href="/chat/c/{run.conversation_id}/#run-{run.pk}">VPN trouble</a>' in page
    assert "How do I reset my <mark>VPN</mark> token?" in page
    assert "Help desk · <time" in page
    assert "canteen" not in page
    # The answer's words are found too (stemmed: "resetting" finds "Reset").
    [hit] = conversations_search(people.member, "resetting the self-service")
    assert hit.run == run
    assert "<mark>self-service</mark>" in hit.answered or "<mark>self</mark>" in hit.answered


def test_another_users_matching_message_is_never_found(client, people, help_desk):
    theirs = said(people.outsider, help_desk, "salary of the board", "The board earns a lot.")
    mine = said(people.member, help_desk, "holiday dates", "See the calendar.")
    client.force_login(people.member)

    page = client.get("/chat/search/", {"q": "salary board"}).content.decode()

    assert "Nothing found" in page
    assert "salary" not in page.split("Nothing found", 1)[1]
    assert f"#run-{theirs.pk}" not in page
    assert conversations_search(people.member, "salary") == []
    assert [h.run for h in conversations_search(people.outsider, "board")] == [theirs]
    assert conversations_search(people.outsider, "holiday") == []
    assert [h.run for h in conversations_search(people.member, "holiday")] == [mine]


def test_an_answer_the_user_was_never_shown_is_not_found(people, help_desk):
    # A held answer is the reviewer's until released; a failed run shows its error, not this.
    said(people.member, help_desk, "question one", "the draft mentions zeppelins", state="failed")
    said(people.member, help_desk, "question two", "zeppelins again", state="awaiting_review")

    assert conversations_search(people.member, "zeppelins") == []
    assert len(conversations_search(people.member, "question")) == 2  # the messages are


def test_html_in_an_answer_is_shown_escaped_in_the_snippet(client, people, help_desk):
    # ts_headline drops what its parser takes for a tag (<img ...>), but not all that a browser
    # would run: these come back from it as written.
    said(
        people.member,
        help_desk,
        "show me the widget",
        "Here is the widget: <svg/onload=alert(1)> and 5 < 6 & 7 > 3, "
        "<<script>script>alert(2)<</script>/script> &lt;b&gt; done",
    )
    client.force_login(people.member)

    page = client.get("/chat/search/", {"q": "widget"}).content.decode()

    results = page.split('id="search-results"', 1)[1]
    assert "<svg" not in results
    assert "< script" not in results
    assert (
        "Here is the <mark>widget</mark>: &lt;svg/onload=alert(1)&gt; and 5 &lt; 6 &amp; 7 &gt; 3,"
    ) in results
    assert "&lt; script&gt;alert(2)&lt; /script&gt; &amp;lt;b&amp;gt; done" in results


def test_marker_characters_in_the_text_make_no_markup_of_their_own():
    assert marked(f"a {START}b{STOP} <i>c</i>") == "a <mark>b</mark> &lt;i&gt;c&lt;/i&gt;"
    # Stray or repeated markers (a model may write those characters) leave balanced <mark>s.
    assert marked(f"{STOP}x{START}{START}y") == "x<mark>y</mark>"
    assert marked(f"{START}<b>") == "<mark>&lt;b&gt;</mark>"


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("", "Type a word or two to search your conversations."),
        ("   ", "Type a word or two to search your conversations."),
        ("x" * 201, "The search is 201 characters long; at most 200 are looked for."),
    ],
)
def test_a_search_that_cannot_run_is_a_readable_message(client, people, q, message):
    client.force_login(people.member)

    response = client.get("/chat/search/", {"q": q})

    assert response.status_code == 400
    page = response.content.decode()
    assert f'<p class="error" id="search-error" role="alert">{message}</p>' in page
    assert "Nothing found" not in page


def test_a_search_with_a_nul_character_is_refused_before_it_reaches_the_database(client, people):
    client.force_login(people.member)

    response = client.get("/chat/search/", {"q": "a\x00b"})

    assert response.status_code == 400  # the portal's guard on every request's input
    assert "This request cannot be read" in response.content.decode()
    with pytest.raises(SearchRefused, match="contains a NUL character"):
        conversations_search(people.member, "a\x00b")


def test_search_syntax_and_stop_words_never_fail(client, people, help_desk):
    said(people.member, help_desk, "printer on floor 3 is jammed", "Call facilities.")
    client.force_login(people.member)

    for q in ['"printer on floor"', "printer -scanner", "printer or fax", "the", "'", "&|!:*()"]:
        response = client.get("/chat/search/", {"q": q})
        assert response.status_code == 200, q
    assert len(conversations_search(people.member, '"printer on floor"')) == 1
    assert conversations_search(people.member, "printer -jammed") == []
    assert conversations_search(people.member, "the") == []  # only stop words: nothing


def test_the_page_without_a_search_shows_the_box(client, people):
    client.force_login(people.member)

    response = client.get("/chat/search/")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<input type="search" id="search-q" name="q" value=""' in page
    assert 'role="alert"' not in page


def test_the_search_box_is_in_the_chat_side_panel(client, people, help_desk):
    client.force_login(people.member)

    page = client.get("/chat/").content.decode()

    side = page.split('<aside class="chat-side"', 1)[1].split("</aside>", 1)[0]
    assert '<form class="search-form" role="search" method="get" action="/chat/search/">' in side
    assert '<label for="chat-search">Search your conversations</label>' in side


def test_the_results_page_takes_a_fixed_number_of_queries(
    client, people, help_desk, django_assert_max_num_queries
):
    for n in range(8):
        conversation = Conversation.objects.create(
            owner=people.member, agent=help_desk, title=f"Leave {n}"
        )
        for m in range(5):
            said(
                people.member,
                help_desk,
                f"leave question {m}",
                f"annual leave answer {n}",
                conversation=conversation,
            )
    client.force_login(people.member)
    client.get("/chat/search/", {"q": "leave"})  # the session and caches warmed

    with django_assert_max_num_queries(6):
        page = client.get("/chat/search/", {"q": "leave"}).content.decode()

    assert "40 messages found" in page
    assert page.count('class="card hit"') == 40
