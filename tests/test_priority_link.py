"""A build request's priority through a real controller process: a bad one is refused whole."""

from distbuild import link
from distbuild.protocol.messages import BuildRequest, Error, ListRequests, RequestList
from tests.controller_process import ControllerProcess


def test_unknown_priority_gets_a_one_line_error_and_no_request(tmp_path):
    controller = ControllerProcess(tmp_path).start()
    try:
        keys = controller.keys
        initiator = link.connect("127.0.0.1", controller.initiator_port, keys.initiator_key,
                                 keys.known_hosts, "initiator", "alice")
        initiator.send(BuildRequest(definitions_repo="git://127.0.0.1:1/defs",
                                    definitions_commit="0" * 40, system="systems/s.morph",
                                    priority="urgent"))
        answer = initiator.receive(timeout=10)
        assert isinstance(answer, Error)
        assert answer.message == ("build-request: priority must be one of high, normal, low, "
                                  "not 'urgent'")
        initiator.send(ListRequests())
        listed = initiator.receive(timeout=10)
        assert isinstance(listed, RequestList) and listed.requests == []
        initiator.close()
        assert "Traceback" not in controller.log()
    finally:
        controller.stop()
