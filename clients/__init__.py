"""The bundled autonomous client: KForge's two-agent generate/analyze loop over kernel-foundry's MCP tools.

    cli.py        ``kfoundry optimize`` arguments -> a Job
    runner.py     one MCP session; every problem x model; reports and manifests
    loop.py       rounds: functional passes, then optimization passes; best-so-far; stopping rules
    attempt.py    one candidate: prompt -> reply -> compile -> verify -> profile -> analyze -> hooks
    agents.py     the generation agent and the performance-analysis agent
    providers/    model registry: anthropic, openai (compatible endpoints), scripted
    session.py    the MCP connection (stdio, streamable HTTP, in-process) with typed tool calls
    prompting.py  prompts from the kfoundry.prompts templates and the server's backend facts;  edits.py  prompt edits, aux code
    hooks.py      user measurement scripts;  artifacts.py  folders, resume, replay commands
    report.py     markdown, fast_p, geomean;  plot.py  PNG;  progress.py  live terminal view (rich)
"""
