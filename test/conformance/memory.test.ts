import { MemoryBackend } from "../../src/index.ts"
import { conformance } from "./suite.ts"

conformance({ name: "memory", layer: MemoryBackend.layer })
