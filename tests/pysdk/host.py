"""An MCP host built with the official MCP Python SDK's stdio client, for
mcpauth's proxy tests: it starts the command given as arguments (e.g.
`mcpauthctl proxy NAME`) as a stdio MCP server, initializes, calls the
`echo` tool, and closes the session the way the SDK does (stdin closed,
then SIGTERM if the server has not exited within 2 s).

Prints one JSON line: the tool's answer and how long the close took.
The server's stderr goes to the file named by MCP_TEST_STDERR_FILE.
"""

import asyncio
import json
import os
import sys
import time

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


async def main() -> None:
    params = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:], env=dict(os.environ))
    with open(os.environ["MCP_TEST_STDERR_FILE"], "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("echo", {"text": "hi"})
                text = result.content[0].text
            closing = time.monotonic()
        closed = time.monotonic() - closing
    print(json.dumps({"text": text, "close_seconds": closed}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
