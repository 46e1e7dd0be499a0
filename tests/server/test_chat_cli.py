"""`kvmemo chat` against a real `kvmemo serve`, one-shot and interactive (driven through its stdin)."""

import re
import subprocess

from service.commands.chat import conversation
from tests.server.conftest import kvmemo_command
from tests.server.test_chat_rpc import QUESTION, chatml_tokens


USAGE = re.compile(r"\[FINISH_REASON_\w+: (\d+) prompt \+ (\d+) completion tokens")


def kvmemo_chat(server, *args, stdin=None):
    return subprocess.run([*kvmemo_command(), "chat", "--server", server.address, "--temperature", "0",
                           "--max-tokens", "5", "--usage", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def prompt_tokens(stderr: str) -> list[int]:
    return [int(p) for p, _ in USAGE.findall(stderr)]


def test_conversation_sends_the_system_message_and_the_whole_history():
    turns = [("user", "Hi"), ("assistant", "Hello!")]
    assert conversation("Be brief.", turns, "Bye") == [("system", "Be brief."), *turns, ("user", "Bye")]
    assert conversation(None, [], "Hi") == [("user", "Hi")]


def test_kvmemo_chat_one_shot(server, stub, tmp_path):
    done = kvmemo_chat(server, "What is the capital of France?", "--system", "Be brief.")
    assert done.returncode == 0, done.stderr
    assert prompt_tokens(done.stderr) == [chatml_tokens(stub, QUESTION)]
    from_stdin = kvmemo_chat(server, "-", "--system", "Be brief.", stdin="What is the capital of France?")
    (tmp_path / "q.txt").write_text("What is the capital of France?")
    from_file = kvmemo_chat(server, "@" + str(tmp_path / "q.txt"), "--system", "Be brief.")
    assert from_stdin.returncode == from_file.returncode == 0
    assert from_stdin.stdout == from_file.stdout == done.stdout


def test_kvmemo_chat_errors_name_the_code_and_server(server, tmp_path):
    bad = kvmemo_chat(server, "Hi", "--max-tokens", "0")
    assert bad.returncode == 1
    assert bad.stderr.startswith("kvmemo chat: INVALID_ARGUMENT: max_tokens") and server.address in bad.stderr
    missing = kvmemo_chat(server, "@" + str(tmp_path / "absent.txt"))
    assert missing.returncode == 1 and "absent.txt" in missing.stderr


def test_kvmemo_chat_says_when_max_tokens_is_capped(server):
    done = kvmemo_chat(server, "z" * 150, "--max-tokens", "100000")
    assert done.returncode == 0, done.stderr
    assert "capped to" in done.stderr and "max_tokens 100000" in done.stderr


def test_kvmemo_chat_interactive_keeps_the_history_until_reset(server):
    done = kvmemo_chat(server, stdin="Hello there\nAnd then?\n/reset\nHello there\n")
    assert done.returncode == 0, done.stderr
    first, second, after_reset = prompt_tokens(done.stderr)
    # The second turn carries the first question and its reply; ChatML adds two headers per turn.
    assert second > first + len("And then?") + 2 * len("<|im_start|>user\n<|im_end|>\n")
    assert after_reset == first and "[conversation reset]" in done.stderr
    assert done.stdout.count("> ") >= 4


def test_kvmemo_chat_interactive_drops_a_refused_turn_and_goes_on(server):
    done = kvmemo_chat(server, stdin="x" * 400 + "\nHello there\n/exit\nnever sent\n")
    assert done.returncode == 0, done.stderr
    assert "INVALID_ARGUMENT: prompt" in done.stderr and "the turn is dropped" in done.stderr
    assert len(prompt_tokens(done.stderr)) == 1
